"""Checkpoint resolution in models/ (issue 10.5) and the config numbers it checks (issue 11.9)."""

from __future__ import annotations

import json

import pytest
import torch

from etp_search.errors import ModelError, StoreMismatchError
from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, checkpoint_fingerprint, save_checkpoint
from etp_search.models.resolve import resolve_checkpoint


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ck"
    save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), path)
    return path


def _edit(path, section, key, value):
    doc = json.loads((path / "config.json").read_text())
    node = doc["model"]
    for part in section:
        node = node[part]
    node[key] = value
    (path / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("section, key, value", [((), "embed_dim", 1e10), (("text",), "max_length", -5),
                                                 ((), "embed_dim", float("nan")),
                                                 # these two built a model (traceback from torch's Dropout; a
                                                 # negative hidden width silently meaning none)
                                                 (("ecg",), "drop_rate", 7), ((), "proj_hidden", -3)])
def test_absurd_config_numbers_are_one_line_before_any_allocation(ckpt, section, key, value):
    _edit(ckpt, section, key, value)
    with pytest.raises(ModelError) as e:
        resolve_checkpoint(ckpt)
    msg = str(e.value)
    assert "\n" not in msg and key in msg and "re-export the checkpoint" in msg


def test_expected_fingerprint_is_checked(ckpt):
    assert resolve_checkpoint(ckpt, checkpoint_fingerprint(ckpt)) == ckpt
    with pytest.raises(StoreMismatchError, match="was written by checkpoint 000000000000"):
        resolve_checkpoint(ckpt, "0" * 64)


def test_search_no_longer_imports_export():
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[1] / "etp_search" / "search.py").read_text()
    mods = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith("etp_search.export") for m in mods)

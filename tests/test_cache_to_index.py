"""`prepare` -> `index` from the signal cache, for every reader the shared/shipped data has.

Bug (issue 10): `prepare cpsc2018/cinc2020 --out cpsc.h5` then `index cpsc.h5` printed a traceback
from the cache reader thread (the cache stored an unknown patient id as "" and the store wanted an
int) and hung forever. Metadata now goes through one RecordMeta, and a dying reader thread ends the
run with one line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from etp_search.cli import _register, app
from etp_search.errors import DataError
from etp_search.export import index_data
from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint
from etp_search.readers import open_dataset
from etp_search.signal_cache import SignalCache, build_cache
from indexing.store import EmbeddingStore
from tests.test_readers_npy import _write_folder

_register()
cli = CliRunner()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), path)
    return path


def _dataset(kind: str, example_ptbxl: Path, tmp_path: Path) -> Path:
    if kind == "ptbxl":
        return example_ptbxl
    if kind == "wfdb":  # the shipped records as a plain WFDB folder (no table)
        dst = tmp_path / "wfdb"
        src = example_ptbxl / "records100"
        shutil.copytree(src, dst)
        return dst
    if kind == "npy":
        reader = open_dataset(example_ptbxl)
        recs = {ref: reader.read(ref) for ref in reader.refs()[:10]}
        return _write_folder(tmp_path / "npy", recs)
    from tests.conftest import SHARED_CPSC

    folder = SHARED_CPSC / "cinc2020"
    if not (folder / "A0001.hea").exists():
        pytest.skip("../shared/data/cpsc2018 is absent")
    return folder


@pytest.mark.parametrize("kind", ["ptbxl", "wfdb", "npy", "cinc"])
def test_prepare_then_index_from_the_cache_equals_index_from_the_folder(kind, example_ptbxl, tiny_ckpt, tmp_path):
    data = _dataset(kind, example_ptbxl, tmp_path)
    cache = tmp_path / "cache.h5"
    res = cli.invoke(app, ["prepare", str(data), "--out", str(cache), "--workers", "0"])
    assert res.exit_code == 0, res.output
    from_cache = index_data(cache, tmp_path / "c.h5", tiny_ckpt, workers=0, progress=False)
    from_folder = index_data(data, tmp_path / "f.h5", tiny_ckpt, workers=0, progress=False)
    assert from_cache["written"] == from_folder["written"] == len(SignalCache.open(cache)) > 0
    with EmbeddingStore.open(tmp_path / "c.h5") as c, EmbeddingStore.open(tmp_path / "f.h5") as f:
        assert c.ids == f.ids
        np.testing.assert_allclose(c.ecg(), f.ecg(), atol=1e-4)
        for col in ("age", "sex", "strat_fold", "patient_id"):  # one representation of unknown
            np.testing.assert_array_equal(c.meta(col), f.meta(col))
        assert c.labels() == f.labels()


def test_a_dying_cache_reader_thread_ends_the_run_with_one_line(example_ptbxl, tiny_ckpt, tmp_path, monkeypatch):
    cache = tmp_path / "cache.h5"
    build_cache(open_dataset(example_ptbxl), cache, workers=0, progress=False)

    def broken(self, idx=None):
        raise OSError("Can't synchronously read data (wrong B-tree signature)")

    monkeypatch.setattr(SignalCache, "signals", broken)
    with pytest.raises(DataError, match=r"reading signal cache .*cache.h5 failed \(OSError: Can't synchronously") as e:
        index_data(cache, tmp_path / "s.h5", tiny_ckpt, workers=0, progress=False)
    assert "\n" not in str(e.value) and "--force" in str(e.value)


def test_a_truncated_cache_is_named_as_a_damaged_cache(example_ptbxl, tmp_path):
    """Issue 11.11: `index bad_cache.h5` said "is a file; pass the folder"."""
    cache = tmp_path / "cache.h5"
    build_cache(open_dataset(example_ptbxl), cache, workers=0, progress=False)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 3])
    res = cli.invoke(app, ["index", str(cache), "--store", str(tmp_path / "s.h5")])
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert "damaged or truncated" in line and "prepare" in line and "pass the folder" not in line

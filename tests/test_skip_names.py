"""Skipped records are named, not only counted: on a large download a count alone did not let a
user find the broken files. `-v` logs each skip (id + reason); `--json` and the table name the first ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etp_search.cli import _register, app

_register()


@pytest.fixture(scope="module")
def damaged(example_ptbxl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real PTB-XL records, two with a truncated .dat and one with a malformed header."""
    root = tmp_path_factory.mktemp("damaged") / "ptbxl"
    shutil.copytree(example_ptbxl, root)
    for stem in ("00009_lr", "00017_lr"):
        dat = root / "records100" / "00000" / f"{stem}.dat"
        dat.write_bytes(dat.read_bytes()[:1000])
    (root / "records100" / "00000" / "00038_lr.hea").write_text("garbage\n")
    return root


EXPECTED = {"truncated signal": ["9", "17"], "malformed header": ["38"]}


@pytest.mark.parametrize("verb", ["prepare", "index"])
def test_skipped_records_are_named_in_json_logs_and_table(verb, damaged, tmp_path, caplog):
    out = ["--out", str(tmp_path / "c.h5")] if verb == "prepare" else ["--store", str(tmp_path / "s.h5")]
    args = [verb, str(damaged), *out, "--workers", "2", "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["skipped"] == {"truncated signal": 2, "malformed header": 1}
    assert summary["skipped_examples"] == EXPECTED
    caplog.clear()
    res = CliRunner().invoke(app, [*args, "-v"] + (["--force"] if verb == "prepare" else []))
    assert res.exit_code == 0, res.output
    for reason, ids in EXPECTED.items():
        for i in ids:
            assert f"skipped {i}: {reason}" in caplog.text  # pytest's handler stands in for stderr
    assert "skipped: truncated signal  2 (9, 17)" in res.stdout

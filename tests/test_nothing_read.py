"""A folder none of whose records can be read is one line and no files, not an empty store or cache
that looks like success (a folder of non-ECG files was taken for CPSC2018 and `index` exited 0)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from etp_search.cli import _register, app

_register()
cli = CliRunner()


@pytest.fixture()
def unreadable(tmp_path, example_ptbxl):
    """Three real WFDB records of the example set whose signal files were cut to nothing."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for hea in sorted((example_ptbxl / "records100" / "00000").glob("*.hea"))[:3]:
        shutil.copy(hea, folder / hea.name)
        (folder / hea.with_suffix(".dat").name).write_bytes(b"")
    return folder


@pytest.mark.parametrize("verb", ["index", "prepare"])
def test_a_folder_of_unreadable_records_is_one_line_and_leaves_no_file(verb, unreadable, tmp_path):
    out = tmp_path / "out" / ("store.h5" if verb == "index" else "cache.h5")
    flag = "--store" if verb == "index" else "--out"
    res = cli.invoke(app, [verb, str(unreadable), flag, str(out), "--no-progress"])
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert f"none of the 3 records found in {unreadable}" in lines[0] and "nothing was written" in lines[0]
    assert "Traceback" not in res.output
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert left == [], left  # no empty store, parts, lock, cache or .partial


def test_one_readable_record_among_unreadable_ones_is_written(unreadable, example_ptbxl, tmp_path):
    """The refusal is for a run that read nothing; one good record makes it an ordinary run with skips."""
    hea = sorted((example_ptbxl / "records100" / "00000").glob("*.hea"))[5]
    shutil.copy(hea, unreadable / hea.name)
    shutil.copy(hea.with_suffix(".dat"), unreadable / hea.with_suffix(".dat").name)
    out = tmp_path / "cache.h5"
    res = cli.invoke(app, ["prepare", str(unreadable), "--out", str(out), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    import json

    summary = json.loads(res.stdout)
    assert summary["records"] == 1 and sum(summary["skipped"].values()) == 3

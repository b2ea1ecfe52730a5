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


def test_an_ecg_without_signal_is_a_counted_skip_and_a_one_line_query_error(example_ptbxl, example_store, tmp_path):
    """An all-zero (1000, 12) array was written as a record and came back from queries (score 0.31)."""
    import json

    import numpy as np

    from etp_search.errors import DataError
    from etp_search.readers import open_dataset
    from etp_search.search import Searcher

    folder = tmp_path / "arrays"
    (folder / "signals").mkdir(parents=True)
    reader = open_dataset(example_ptbxl)
    for rid in reader.refs()[:3]:
        np.save(folder / "signals" / f"{rid}.npy", reader.read(rid).signal.T)
    np.save(folder / "signals" / "99999.npy", np.zeros((1000, 12), np.float32))
    ids = [*reader.refs()[:3], "99999"]
    (folder / "meta.csv").write_text("id,report\n" + "".join(f"{i},sinus rhythm\n" for i in ids))
    (folder / "etp-arrays.json").write_text(json.dumps({"format": "npy-folder", "signals": "signals", "fs": 100,
                                                        "layout": "samples x leads", "leads": "standard",
                                                        "unit": "mV", "seconds": 10, "table": "meta.csv"}))
    res = cli.invoke(app, ["prepare", str(folder), "--out", str(tmp_path / "c.h5"), "--json", "--no-progress",
                           "--workers", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["records"] == 3 and summary["skipped"] == {"no signal": 1}
    assert summary["skipped_examples"]["no signal"] == ["99999"]
    with Searcher.open(example_store) as s:
        with pytest.raises(DataError, match="no signal: every lead is flat"):
            s.query_signal(np.zeros((12, 1000), np.float32), 100.0, k=3)
        flat_but_one = np.zeros((12, 1000), np.float32)
        flat_but_one[1] = reader.read(reader.refs()[0]).signal[1]
        assert len(s.query_signal(flat_but_one, 100.0, k=3)) == 3  # one recorded lead is still an ECG

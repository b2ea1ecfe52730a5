"""`query --ecg X.npy --fs --layout`: a NumPy ECG is read as the server reads an upload, and finds
what the same record's WFDB files find."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from etp_search.cli import _register, app
from etp_search.readers import open_dataset

_register()
cli = CliRunner()


def test_npy_query_matches_the_wfdb_query_of_the_same_record(example_store, example_ptbxl, tmp_path):
    rec = open_dataset(example_ptbxl).read("17")
    np.save(tmp_path / "rec 17.npy", rec.signal.T * 1000.0)  # microvolts, samples x leads; a name with a space
    hea = example_ptbxl / "records100" / "00000" / "00017_lr.hea"
    base = ["query", "--store", str(example_store), "-k", "5", "--json"]
    want = cli.invoke(app, [*base, "--ecg", str(hea)])
    got = cli.invoke(app, [*base, "--ecg", str(tmp_path / "rec 17.npy"), "--fs", "100", "--layout", "samples x leads",
                           "--unit", "uV"])
    assert want.exit_code == 0 and got.exit_code == 0, got.output
    w, g = json.loads(want.stdout)["hits"], json.loads(got.stdout)["hits"]
    assert [h["id"] for h in g] == [h["id"] for h in w] and g[0]["id"] == "17"
    np.testing.assert_allclose([h["score"] for h in g], [h["score"] for h in w], atol=1e-4)


def test_npy_query_options_are_one_line_errors(example_store, example_ptbxl, tmp_path):
    np.save(tmp_path / "q.npy", np.zeros((1000, 12), np.float32))
    hea = example_ptbxl / "records100" / "00000" / "00017_lr.hea"
    base = ["query", "--store", str(example_store)]
    for args, words in ((["--ecg", str(tmp_path / "q.npy")], "give its sampling rate and layout"),
                        (["--ecg", str(tmp_path / "q.npy"), "--fs", "100", "--layout", "leads x samples"], "check the layout"),
                        (["--ecg", str(hea), "--fs", "100"], "describe a NumPy --ecg X.npy"),
                        (["--ecg", str(tmp_path / "q.npy"), "--fs", "100", "--layout", "samples x leads"], "no signal")):
        res = cli.invoke(app, [*base, *args])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and words in lines[0], (args, res.output)

"""Plots re-read raw signals from the folder a store was indexed from (one reader, `search.source_reader`,
for `query --plot` and the server); a folder that is gone is one line, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from etp_search.cli import _register, app
from etp_search.errors import DataError
from etp_search.search import source_reader

_register()
cli = CliRunner()


@pytest.fixture(scope="module")
def moved_store(tmp_path_factory, example_ptbxl) -> tuple[Path, Path]:
    """A store of a copy of the example records, and that copy's folder (the tests remove it)."""
    from etp_search.export import index_data

    root = tmp_path_factory.mktemp("moved")
    data = root / "ptbxl"
    shutil.copytree(example_ptbxl, data)
    store = root / "store.h5"
    index_data(data, store, workers=0, progress=False)
    return store, data


def test_source_reader_reads_the_indexed_records_at_the_stored_rate(example_store, example_ptbxl):
    from etp_search.readers import open_dataset
    from indexing.store import EmbeddingStore

    with EmbeddingStore.open(example_store) as s:
        prov = dict(s.provenance)
    reader = source_reader(prov, "unused")
    rec, direct = reader.read("17"), open_dataset(example_ptbxl, sampling_rate=int(prov["sampling_rate"])).read("17")
    assert rec.fs == direct.fs == float(prov["sampling_rate"])
    np.testing.assert_array_equal(rec.signal, direct.signal)
    with pytest.raises(DataError, match=r"\(/nowhere/ptbxl\) are not here; re-index"):
        source_reader({**prov, "data_dir": "/nowhere/ptbxl"}, "re-index")


def test_plot_and_server_name_a_dataset_folder_that_is_gone(moved_store, tmp_path):
    from etp_search.serve.engine import Engine, NotAvailableError

    store, data = moved_store
    shutil.rmtree(data)
    out = tmp_path / "hits.png"
    res = cli.invoke(app, ["query", "--store", str(store), "--record", "17", "-k", "2", "--plot", str(out)])
    assert res.exit_code == 1 and not out.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data) in lines[0] and "drop --plot" in lines[0], res.stderr
    eng = Engine(store, refresh_s=0, workers=1)
    try:
        with pytest.raises(NotAvailableError, match=f"{data}.*indexed from on this server"):
            eng.record_signal("17")
    finally:
        eng.close()

"""`etp-search info STORE.h5 / CACHE.h5`: what a store or a signal cache holds (a user trial found no
verb that described either: `info` refused them as 'a file')."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from etp_search.cli import _register, app
from indexing.store import EmbeddingStore

_register()
cli = CliRunner()


def test_info_on_a_store_says_what_it_holds_and_the_state_of_its_indexes(tmp_path: Path, example_store: Path) -> None:
    store = tmp_path / "store.h5"
    for p in example_store.parent.glob(example_store.name + "*"):
        (shutil.copytree if p.is_dir() else shutil.copy)(p, tmp_path / p.name)
    with EmbeddingStore.open(store) as s:
        texts, sha = s.texts(), s.provenance["checkpoint_sha256"]
        folds = s.meta("strat_fold").tolist()
    res = cli.invoke(app, ["info", str(store), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["kind"] == "embedding store" and d["rows"] == 50 and d["checkpoint"]["sha256"] == sha
    assert d["reports"] == {"counted_rows": 50, "non_empty": 50, "distinct": len(set(texts))}
    assert d["folds"] == {"9": folds.count(9), "10": folds.count(10)}
    assert d["indexes"]["ecg"]["state"] == "current" and d["indexes"]["ecg"]["rows_covered"] == 50
    Path(f"{store}.text.faiss").unlink()
    side = Path(f"{store}.ecg.faiss.json")
    side.write_text(json.dumps(dict(json.loads(side.read_text()), n_rows=40)))  # as if 10 rows came after the build
    d = json.loads(cli.invoke(app, ["info", str(store), "--json"]).stdout)
    assert d["indexes"]["text"]["state"].startswith("missing") and "--rebuild-index" in d["indexes"]["text"]["state"]
    assert d["indexes"]["ecg"]["state"].startswith("behind: 10 newer rows")
    table = cli.invoke(app, ["info", str(store)]).stdout
    assert "ecg index" in table and "Flat over 40 rows" in table and "distinct" in table


def test_info_on_a_cache_and_on_other_files(tmp_path: Path, example_ptbxl: Path) -> None:
    cache = tmp_path / "c.h5"
    assert cli.invoke(app, ["prepare", str(example_ptbxl), "--out", str(cache), "--workers", "0", "--no-progress"]).exit_code == 0
    d = json.loads(cli.invoke(app, ["info", str(cache), "--json"]).stdout)
    assert d["kind"] == "signal cache" and d["records"] == 50 and d["signal_shape"] == [12, 1000]
    assert d["preset"] == "etp-100hz" and "scp_en" in d["text_sources"]
    other = tmp_path / "other.h5"
    other.write_text("not hdf5")
    res = cli.invoke(app, ["info", str(other)])
    assert res.exit_code == 1 and "not an HDF5 file" in res.output and "Traceback" not in res.output


def _copy_store(example_store: Path, to: Path) -> Path:
    for p in example_store.parent.glob(example_store.name + "*"):
        (shutil.copytree if p.is_dir() else shutil.copy)(p, to / p.name)
    return to / example_store.name


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 8] = bytes(255 - b for b in raw[offset:offset + 8])
    path.write_bytes(bytes(raw))


def test_info_verify_reads_everything_and_names_the_damage(tmp_path: Path, example_store: Path) -> None:
    """Flipped vector bytes passed `info` ('current') and text queries, which read the index, not
    the vectors; `--verify` reads every column and hashes the index files afresh."""
    import h5py

    good = _copy_store(example_store, tmp_path)
    res = cli.invoke(app, ["info", str(good), "--verify", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)["verified"]
    assert v["rows"] == 50 and {"ecg", "text", "ids", "texts", "labels", "meta/strat_fold"} <= set(v["columns_read"])
    assert set(v["indexes"]) == {"ecg", "text"} and all("matches" in x for x in v["indexes"].values())

    (tmp_path / "a").mkdir()
    store = _copy_store(example_store, tmp_path / "a")
    with h5py.File(store, "r") as f:
        at = f["ecg"].id.get_chunk_info(0).byte_offset
    _flip(store, at + 64)
    assert cli.invoke(app, ["info", str(store), "--no-progress"]).exit_code == 0  # a look does not read vectors
    res = cli.invoke(app, ["info", str(store), "--verify", "--no-progress"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and f"store {store} is damaged" in lines[0] and "ecg" in lines[0]

    (tmp_path / "b").mkdir()
    store = _copy_store(example_store, tmp_path / "b")
    index = Path(str(store) + ".text.faiss")
    _flip(index, index.stat().st_size // 2)
    res = cli.invoke(app, ["info", str(store), "--verify", "--no-progress"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and str(index) in lines[0] and "SHA-256" in lines[0], res.output
    assert "--rebuild-index" in lines[0]


def test_info_verify_on_anything_but_a_store_is_one_line(tmp_path: Path, example_ptbxl: Path) -> None:
    """A folder or a sidecar .json was described with --verify silently unused."""
    sidecar = tmp_path / "arrays.json"
    sidecar.write_text("{}")
    for target in (example_ptbxl, sidecar):
        res = cli.invoke(app, ["info", str(target), "--verify", "--no-progress"])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and "--verify checks an embedding store" in lines[0], res.output

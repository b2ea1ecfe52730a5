"""The NumPy-folder reader (declared rate/layout/leads/unit) and several folders read as one.

Arrays are written here from the real PTB-XL example records, so a read-back can be compared with
what the WFDB reader gives for the same record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from etp_search.cli.info import info
from etp_search.cli.prepare import prepare
from etp_search.errors import DataError
from etp_search.readers import detect_format, open_dataset
from etp_search.readers.npy_folder import estimate_bpm
from etp_search.records import STANDARD_LEADS
from etp_search.signal_cache import SignalCache

SHUFFLED = ["V6", "I", "aVR", "V1", "II", "V3", "III", "aVL", "V2", "aVF", "V5", "V4"]


@pytest.fixture(scope="module")
def wfdb_records(example_ptbxl: Path) -> dict[str, object]:
    reader = open_dataset(example_ptbxl)
    return {ref: reader.read(ref) for ref in reader.refs()[:12]}


def _write_folder(root: Path, records: dict, *, layout: str = "samples x leads", leads=None, unit: str = "mV",
                  scale: float = 1.0, sidecar: dict | None = None, table: bool = True, pad: bool = False) -> Path:
    """Arrays + a generic CSV table + etp-arrays.json for the given WFDB records."""
    names = leads or list(STANDARD_LEADS)
    order = [STANDARD_LEADS.index(n) for n in names]
    (root / "signals").mkdir(parents=True, exist_ok=True)
    rows = []
    for rid, rec in records.items():
        x = rec.signal[order] * scale  # (leads, samples) in the declared lead order
        np.save(root / "signals" / f"{int(rid):05d}.npy" if pad else root / "signals" / f"{rid}.npy",
                x.T if layout == "samples x leads" else x)
        rows.append({"id": rid, "report": rec.text, "labels": json.dumps(rec.labels), "strat_fold": rec.meta["strat_fold"],
                     "age": rec.meta["age"], "sex": "female" if rec.meta["sex"] == 1 else "male"})
    doc = {"format": "npy-folder", "signals": "signals", "fs": 100, "layout": layout,
           "leads": "standard" if leads is None else leads, "unit": unit, "seconds": 10}
    if table:
        pd.DataFrame(rows).to_csv(root / "meta.csv", index=False)
        doc["table"] = "meta.csv"
    if pad:
        doc["id"] = "int"
    doc.update(sidecar or {})
    (root / "etp-arrays.json").write_text(json.dumps(doc))
    return root


def test_arrays_read_back_as_the_wfdb_records(wfdb_records, tmp_path):
    folder = _write_folder(tmp_path / "a", wfdb_records)
    assert detect_format(folder) == "npy"
    reader = open_dataset(folder)
    assert reader.refs() == sorted(wfdb_records, key=lambda s: (len(s), s))
    for rid, want in wfdb_records.items():
        rec = reader.read(rid)
        np.testing.assert_allclose(rec.signal, want.signal, atol=1e-6)
        assert rec.fs == 100.0 and rec.id == rid and rec.text == want.text and rec.labels == want.labels
        assert rec.meta["strat_fold"] == want.meta["strat_fold"] and rec.meta["sex"] == want.meta["sex"]
        assert rec.meta["missing_leads"] == [] and rec.meta["unit"] == "mV"


def test_transposed_shuffled_microvolt_arrays_give_the_same_signal(wfdb_records, tmp_path):
    folder = _write_folder(tmp_path / "b", wfdb_records, layout="leads x samples", leads=SHUFFLED, unit="uV",
                           scale=1000.0)
    reader = open_dataset(folder)
    for rid, want in wfdb_records.items():
        np.testing.assert_allclose(reader.read(rid).signal, want.signal, atol=1e-5)


def test_a_sidecar_outside_a_read_only_folder_and_integer_ids(wfdb_records, tmp_path):
    folder = _write_folder(tmp_path / "c", wfdb_records, pad=True)
    (folder / "etp-arrays.json").unlink()
    side = tmp_path / "elsewhere" / "c.json"
    side.parent.mkdir()
    side.write_text(json.dumps({"format": "npy-folder", "root": "../c", "signals": "signals", "fs": 100,
                                "layout": "samples x leads", "leads": "standard", "unit": "mV", "id": "int",
                                "table": "../c/meta.csv"}))
    assert (folder / "signals" / "00009.npy").exists()
    reader = open_dataset(side)
    assert "9" in reader.refs() and "00009" not in reader.refs()
    np.testing.assert_allclose(reader.read("9").signal, wfdb_records["9"].signal, atol=1e-6)


def test_ptbxl_table_convention_gives_the_ptbxl_labels_and_reports(example_ptbxl, wfdb_records, tmp_path):
    folder = _write_folder(tmp_path / "d", wfdb_records, table=False,
                           sidecar={"table": str(example_ptbxl / "ptbxl_database.csv"), "table_convention": "ptbxl"})
    reader = open_dataset(folder)
    assert reader.format_name == "npy-ptbxl"
    for rid, want in wfdb_records.items():
        rec = reader.read(rid)
        assert rec.labels == want.labels and rec.text == want.text and rec.meta["texts"] == want.meta["texts"]
        assert rec.meta["patient_id"] == want.meta["patient_id"] and rec.meta["strat_fold"] == want.meta["strat_fold"]


@pytest.mark.parametrize("change, words", [
    ({"layout": "leads x samples"}, ['"layout" says leads x samples', 'set "layout": "samples x leads"']),
    ({"fs": 500}, ['"fs" 500 Hz and "seconds" 10 disagree', "100 Hz would give 10 s"]),
    ({"fs": 500, "seconds": None}, ['at the declared "fs" 500 Hz', '"fs" is likely wrong']),
    ({"fs": 0.01}, ['"fs" must be a sampling rate in Hz between 50 and 10000']),
    ({"leads": ["I", "II", "III"]}, ["no axis of the 3 declared leads"]),
    ({"unit": "mmHg"}, ['"unit" must be one of mV, uV, V, sd']),
    ({"unit": None, "layout": None}, ["must declare layout, unit (never guessed"]),
])
def test_a_wrong_declaration_is_one_line_naming_the_field(wfdb_records, tmp_path, change, words):
    folder = _write_folder(tmp_path / "e", wfdb_records)
    doc = json.loads((folder / "etp-arrays.json").read_text())
    doc.update(change)
    doc = {k: v for k, v in doc.items() if v is not None}
    (folder / "etp-arrays.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as exc:
        open_dataset(folder)
    msg = str(exc.value)
    assert "\n" not in msg and str(folder / "etp-arrays.json") in msg
    for w in words:
        assert w in msg


def test_wrong_layout_through_the_cli_is_one_error_line(wfdb_records, tmp_path):
    folder = _write_folder(tmp_path / "f", wfdb_records, sidecar={"layout": "leads x samples"})
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("info")(info)
    app.command("prepare")(prepare)
    for verb in (["info", str(folder)], ["prepare", str(folder), "--out", str(tmp_path / "c.h5"), "--workers", "0"]):
        res = CliRunner().invoke(app, verb)
        assert res.exit_code == 1
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and '"layout": "samples x leads"' in lines[0]
        assert "Traceback" not in res.output
    assert not (tmp_path / "c.h5").exists()


def test_one_odd_array_among_agreeing_ones_is_a_skip_not_the_folders_error(wfdb_records, tmp_path):
    """The first array transposed (or short) refused the whole folder with advice that, followed,
    would have broken the 11 good arrays; most arrays agreeing with the sidecar, it is that record's skip."""
    folder = _write_folder(tmp_path / "o", wfdb_records)
    first, second = sorted(wfdb_records, key=lambda r: int(r))[:2]  # the checked picks include the first
    sig = folder / "signals"
    np.save(sig / f"{first}.npy", np.load(sig / f"{first}.npy").T)  # (12, 1000) under "samples x leads"
    np.save(sig / f"{second}.npy", np.load(sig / f"{second}.npy")[:500])  # 5 s where "seconds" says 10
    reader = open_dataset(folder)
    got = sorted(r.id for r in reader)
    assert got == sorted(set(wfdb_records) - {first, second})
    assert sum(reader.summary.skipped.values()) == 2
    # the same two arrays, but now most arrays are transposed: the declaration is what is wrong
    for rid in sorted(wfdb_records, key=lambda r: int(r))[2:9]:
        np.save(sig / f"{rid}.npy", np.load(sig / f"{rid}.npy").T)
    with pytest.raises(DataError, match=r'set "layout": "leads x samples" \(\d+ of the \d+ arrays checked\)'):
        open_dataset(folder)


def test_folder_of_arrays_without_a_sidecar_asks_for_one(tmp_path):
    (tmp_path / "signals").mkdir()
    np.save(tmp_path / "signals" / "1.npy", np.zeros((1000, 12), np.float32))
    with pytest.raises(DataError, match="no etp-arrays.json declaring their fs, layout, leads and unit"):
        open_dataset(tmp_path)


def test_bad_arrays_are_counted_skips(wfdb_records, tmp_path):
    folder = _write_folder(tmp_path / "g", wfdb_records)
    sig = folder / "signals"
    np.save(sig / "900001.npy", np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)  # needs pickle: refused
    np.save(sig / "900002.npy", np.zeros((999, 7), np.float32))
    np.save(sig / "900003.npy", np.zeros((1000, 12), np.complex64))
    (sig / "900004.npy").write_bytes((sig / "9.npy").read_bytes()[:300])  # truncated
    np.save(sig / "900005.npy", np.zeros((1000, 12), np.float32))  # no metadata row
    table = pd.read_csv(folder / "meta.csv", dtype=str)
    extra = pd.DataFrame({"id": ["900001", "900002", "900003", "900004"]})
    pd.concat([table, extra]).to_csv(folder / "meta.csv", index=False)
    reader = open_dataset(folder)
    got = [r.id for r in reader]
    assert sorted(got) == sorted(wfdb_records)
    assert reader.summary.skipped == {"unreadable array": 2, "array shape": 1, "array dtype": 1, "no metadata row": 1}


def test_beat_rate_estimate_tracks_the_declared_rate(wfdb_records):
    bpm = [estimate_bpm(r.signal, 100) for r in wfdb_records.values()]
    assert 40 < np.median(bpm) < 110
    assert np.median([estimate_bpm(r.signal, 500) for r in wfdb_records.values()]) == pytest.approx(5 * np.median(bpm))


def test_mixed_wfdb_and_numpy_cache_has_each_id_once(example_ptbxl, wfdb_records, tmp_path):
    # Half of the arrays repeat WFDB ids (kept once, from the first folder), half are new ids.
    recs = list(wfdb_records.values())
    new = {str(800000 + i): r for i, r in enumerate(recs[:6])}
    dup = {r.id: r for r in recs[6:]}
    folder = _write_folder(tmp_path / "h", {**new, **dup}, sidecar={"table": "meta.csv"})
    meta = pd.read_csv(folder / "meta.csv", dtype=str)
    for rid in dup:  # the duplicate's array is scaled, so the cache shows which copy was kept
        np.save(folder / "signals" / f"{rid}.npy", (dup[rid].signal * 3).T)
    meta.to_csv(folder / "meta.csv", index=False)
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("prepare")(prepare)
    app.command("info")(info)
    out = tmp_path / "mixed.h5"
    res = CliRunner().invoke(app, ["prepare", str(example_ptbxl), str(folder), "--out", str(out), "--workers", "0",
                                   "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["records"] == 50 + 6 and summary["duplicate_ids"] == 6 and summary["format"] == "ptbxl+npy"
    with SignalCache.open(out) as c:
        ids = c.ids
        assert len(ids) == len(set(ids)) == 56
        assert set(new) <= set(ids) and set(dup) <= set(ids)
        sources = c.meta("source")
        for rid in dup:
            assert sources[ids.index(rid)].startswith("records100/")  # the WFDB copy, given first
        folds = c.meta("strat_fold")
        assert all(folds[ids.index(rid)] == new[rid].meta["strat_fold"] for rid in new)
    # A list file naming the same two folders builds the same cache (up to date, nothing rebuilt).
    lst = tmp_path / "both.txt"
    lst.write_text(f"# two sources\n{example_ptbxl}\n\n{folder.name}\n")
    res = CliRunner().invoke(app, ["prepare", str(lst), "--out", str(out), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["up_to_date"] is True


def test_list_file_with_a_missing_entry_is_one_line(tmp_path):
    lst = tmp_path / "data.txt"
    lst.write_text("nowhere\n")
    with pytest.raises(DataError, match=r"data.txt line 1: nowhere does not exist"):
        open_dataset(lst)


def test_index_and_train_take_several_folders(example_ptbxl, wfdb_records, tmp_path, monkeypatch):
    import torch

    from etp_search.cli import _register, app as etp_app
    from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint
    from indexing.store import EmbeddingStore

    recs = list(wfdb_records.values())
    folder = _write_folder(tmp_path / "i", {**{str(700000 + i): r for i, r in enumerate(recs[:4])},
                                             recs[5].id: recs[5]})
    torch.manual_seed(0)
    ckpt = save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), tmp_path / "ck")
    _register()
    store = tmp_path / "store.h5"
    res = CliRunner().invoke(etp_app, ["index", str(example_ptbxl), str(folder), "--store", str(store),
                                       "--checkpoint", str(ckpt), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == 54
    with EmbeddingStore.open(store) as s:
        assert len(s.ids) == len(set(s.ids)) == 54 and "700003" in s.ids
    monkeypatch.chdir(tmp_path)
    lst = tmp_path / "both.txt"
    lst.write_text(f"{example_ptbxl}\n{folder}\n")
    res = CliRunner().invoke(etp_app, ["train", str(lst), "--out", str(tmp_path / "run"), "--encoder", "test_tiny",
                                       "--epochs", "1", "--batch-size", "16", "--embed-dim", "16", "--train-folds",
                                       "10", "--val-folds", "9", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    with SignalCache.open(cfg["cache"]) as c:
        assert len(c) == 54 and len(set(c.ids)) == 54
    from etp_search.signal_cache.locate import default_cache_path

    assert Path(cfg["cache"]).name == default_cache_path("ptbxl+npy", "etp-100hz", [example_ptbxl, folder]).name

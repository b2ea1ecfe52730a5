"""Issue 11 items 2, 9 and 12: every one-record failure is a counted SkipRecord with a named reason,
in every verb; table-level damage is one DataError line. Each input is a copy of a real record."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
import wfdb
from typer.testing import CliRunner

from etp_search.errors import DataError
from etp_search.readers import SkipRecord, open_dataset
from etp_search.readers.base import Reader
from etp_search.records import EcgRecord

REC = "records100/00000/00017_lr"  # ecg_id 17 of the shipped examples


def _copy(example_ptbxl: Path, root: Path) -> Path:
    shutil.copytree(example_ptbxl, root)
    return root


def _edit_header(hea: Path, edit: Callable[[list[str]], list[str]]) -> None:
    hea.write_text("\n".join(edit(hea.read_text().splitlines())) + "\n")


def _record_field(i: int, value: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        parts = lines[0].split()
        parts[i] = value
        return [" ".join(parts), *lines[1:]]
    return edit


def _first_gain(value: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        parts = lines[1].split()
        parts[2] = value
        return [lines[0], " ".join(parts), *lines[2:]]
    return edit


def _edit_cell(root: Path, ecg_id: str, column: str, value: str) -> None:
    path = root / "ptbxl_database.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[table["ecg_id"] == ecg_id, column] = value
    table.to_csv(path, index=False)


def _zero_samples(root: Path, rec: str) -> None:
    _edit_header(root / f"{rec}.hea", _record_field(3, "0"))
    (root / f"{rec}.dat").write_bytes(b"")


# (trigger, how to make it in a PTB-XL copy, the reason it must be counted under)
PTBXL_TRIGGERS = [
    ("rate 1e9", lambda r: _edit_header(r / f"{REC}.hea", _record_field(2, "1e9")), "sampling rate out of range"),
    ("rate 1e400", lambda r: _edit_header(r / f"{REC}.hea", _record_field(2, "1e400")), "sampling rate out of range"),
    ("rate 0.01", lambda r: _edit_header(r / f"{REC}.hea", _record_field(2, "0.01")), "sampling rate out of range"),
    ("baseline 1e400", lambda r: _edit_header(r / f"{REC}.hea", _first_gain("1000.0(1e400)/mV")), "malformed header"),
    ("gain 1e400", lambda r: _edit_header(r / f"{REC}.hea", _first_gain("1e400/mV")), "malformed header"),
    ("length ²", lambda r: _edit_header(r / f"{REC}.hea", _record_field(3, "1000\u00b2")), "malformed header"),
    ("strat_fold 1e999", lambda r: _edit_cell(r, "17", "strat_fold", "1e999"), "malformed strat_fold"),
    ("patient_id inf", lambda r: _edit_cell(r, "17", "patient_id", "inf"), "malformed patient_id"),
    ("scp None", lambda r: _edit_cell(r, "17", "scp_codes", "{'NORM': None}"), "malformed scp_codes"),
    ("scp 200k-deep", lambda r: _edit_cell(r, "17", "scp_codes", "-" * 200_000 + "1"), "malformed scp_codes"),
    ("0 samples", lambda r: _zero_samples(r, REC), "empty signal"),
]


@pytest.mark.parametrize("name, make, reason", PTBXL_TRIGGERS, ids=[t[0] for t in PTBXL_TRIGGERS])
def test_ptbxl_trigger_is_a_counted_skip(example_ptbxl, tmp_path, name, make, reason):
    root = _copy(example_ptbxl, tmp_path / "ptbxl")
    make(root)
    reader = open_dataset(root)
    with pytest.raises(SkipRecord) as err:
        reader.read("17")
    assert err.value.reason == reason and "\n" not in str(err.value)
    records = list(reader)
    assert len(records) == 49 and reader.summary.skipped == {reason: 1}


def _wfdb_copy(example_ptbxl: Path, root: Path, stems: tuple[str, ...] = ("00009_lr", "00017_lr")) -> Path:
    root.mkdir(parents=True)
    for stem in stems:
        for ext in ("hea", "dat"):
            shutil.copy(example_ptbxl / "records100/00000" / f"{stem}.{ext}", root / f"{stem}.{ext}")
    return root


@pytest.mark.parametrize("rate", ["1e9", "1e400", "0.01", "0.001", "49.9", "10001"])
def test_wfdb_folder_rates_outside_the_ecg_range_are_skipped_before_resampling(example_ptbxl, tmp_path, rate):
    # In a WFDB folder nothing else checks the rate: 1e9 crashed resampling (up and down must be >= 1),
    # 0.01 Hz made a 24 KB file allocate 4-9 GB.
    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    _edit_header(root / "00017_lr.hea", _record_field(2, rate))
    reader = open_dataset(root)
    with pytest.raises(SkipRecord) as err:
        reader.read("00017_lr")
    assert err.value.reason == "sampling rate out of range" and "50-10000 Hz" in str(err.value)
    assert [r.id for r in reader] == ["00009_lr"]


def _cpsc_struct(tmp_path: Path, example_ptbxl: Path) -> Path:
    data = wfdb.rdrecord(str(example_ptbxl / REC)).p_signal.T
    root = tmp_path / "cpsc"
    root.mkdir()
    scipy.io.savemat(root / "A0001.mat", {"ECG": {"sex": "Male", "age": 50.0, "data": data}})
    scipy.io.savemat(root / "A0002.mat", {"ECG": {"sex": "Male", "age": 50.0, "data": "not a signal"}})
    scipy.io.savemat(root / "A0003.mat", {"ECG": {"sex": "Male", "age": 50.0, "data": data + 0.5j}})
    scipy.io.savemat(root / "A0004.mat", {"ECG": {"sex": "Male", "age": np.inf, "data": data}})
    (root / "REFERENCE.csv").write_text("Recording,First_label\nA0001,1\nA0002,1\nA0003,1\nA0004,1\n")
    return root


def test_cpsc_struct_with_string_or_complex_data(example_ptbxl, tmp_path):
    reader = open_dataset(_cpsc_struct(tmp_path, example_ptbxl))
    assert reader.format_name == "cpsc2018"
    records = {r.id: r for r in reader}
    assert sorted(records) == ["A0001", "A0004"]
    assert reader.summary.skipped == {"bad signal type": 1, "complex signal": 1}
    assert np.isnan(records["A0004"].meta["age"])  # inf is no age


@pytest.mark.needs_shared_data
def test_cinc_complex_val_is_skipped_not_truncated_to_its_real_part(shared_cpsc, tmp_path):
    shutil.copy(shared_cpsc / "cinc2020" / "A0002.hea", tmp_path / "A0002.hea")
    val = scipy.io.loadmat(shared_cpsc / "cinc2020" / "A0002.mat")["val"]
    scipy.io.savemat(tmp_path / "A0002.mat", {"val": val + 1j})
    with pytest.raises(SkipRecord) as err:
        open_dataset(tmp_path).read("A0002")
    assert err.value.reason == "complex signal"


def test_empty_ecg_id_is_one_table_error(example_ptbxl, tmp_path):
    # The key of every record: a row without one means the table is damaged, like duplicate ids.
    root = _copy(example_ptbxl, tmp_path / "ptbxl")
    _edit_cell(root, "17", "ecg_id", "  ")
    with pytest.raises(DataError, match="without ecg_id") as err:
        open_dataset(root)
    assert "\n" not in str(err.value) and "ptbxl_database.csv" in str(err.value)


def test_ptbxl_without_strat_fold_warns_once_and_gives_fold_minus_one(example_ptbxl, tmp_path, caplog):
    root = _copy(example_ptbxl, tmp_path / "ptbxl")
    path = root / "ptbxl_database.csv"
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="strat_fold").to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="etp_search"):
        reader = open_dataset(root)
        folds = {r.meta["strat_fold"] for r in reader}
    warned = [r for r in caplog.records if "no strat_fold column" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert folds == {-1}


def test_empty_and_valid_cells_keep_their_meaning(example_ptbxl, tmp_path):
    root = _copy(example_ptbxl, tmp_path / "ptbxl")
    for column in ("age", "sex", "strat_fold", "patient_id"):
        _edit_cell(root, "17", column, "")
    _edit_cell(root, "9", "age", "300")  # PTB-XL's code for "over 89"
    reader = open_dataset(root)
    rec = reader.read("17")
    assert np.isnan(rec.meta["age"]) and rec.meta["sex"] == -1
    assert rec.meta["strat_fold"] == -1 and rec.meta["patient_id"] == -1
    assert reader.read("9").meta["age"] == 300.0


def test_mimic_empty_study_id_is_one_table_error(example_ptbxl, tmp_path):
    from tests.test_readers_wfdb import _mimic

    _mimic(example_ptbxl, tmp_path)
    path = tmp_path / "record_list.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[0, "study_id"] = ""
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match="without study_id"):
        open_dataset(tmp_path)


def test_signal_file_outside_the_record_folder_is_not_read(example_ptbxl, tmp_path):
    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    outside = _wfdb_copy(example_ptbxl, tmp_path / "elsewhere", ("00038_lr",))
    assert outside.exists()
    _edit_header(root / "00017_lr.hea",
                 lambda lines: [lines[0], *(ln.replace("00017_lr.dat", "../elsewhere/00038_lr.dat") for ln in lines[1:])])
    with pytest.raises(SkipRecord, match="outside the record's folder"):
        open_dataset(root).read("00017_lr")


def test_one_file_with_two_sample_formats_is_malformed(example_ptbxl, tmp_path):
    # wfdb decodes such a file without an error, as garbage.
    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    _edit_header(root / "00017_lr.hea", lambda lines: [lines[0], lines[1].replace(" 16 ", " 212 ", 1), *lines[2:]])
    with pytest.raises(SkipRecord) as err:
        open_dataset(root).read("00017_lr")
    assert err.value.reason == "malformed header" and "one file has one format" in str(err.value)


@pytest.mark.parametrize("length, reason", [(1, "signal too short"), (50, "signal too short")])
def test_records_under_one_second_are_skipped(example_ptbxl, tmp_path, length, reason):
    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    _edit_header(root / "00017_lr.hea", _record_field(3, str(length)))
    dat = root / "00017_lr.dat"
    dat.write_bytes(dat.read_bytes()[: 24 * length])
    with pytest.raises(SkipRecord) as err:
        open_dataset(root).read("00017_lr")
    assert err.value.reason == reason


def test_header_larger_than_a_header_and_skew_beyond_memory(example_ptbxl, tmp_path):
    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    hea = root / "00017_lr.hea"
    hea.write_bytes(hea.read_bytes() + b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(SkipRecord, match="larger than"):
        open_dataset(root).read("00017_lr")
    shutil.copy(tmp_path / "w" / "00009_lr.hea", hea)
    _edit_header(hea, lambda lines: [lines[0].replace("00009", "00017"),
                                     *(ln.replace("00009_lr.dat 16 ", "00017_lr.dat 16:999999999 ") for ln in lines[1:])])
    with pytest.raises(SkipRecord) as err:  # wfdb would allocate 22 GB for the skew before reading a byte
        open_dataset(root).read("00017_lr")
    assert err.value.reason == "record too large"


# --- the guard every reader gets from the base class ------------------------------------------

class _Exploding(Reader):
    """A reader as a new layout might write one: no error handling at all."""

    format_name = "exploding"

    def _list_refs(self):
        return ["overflow", "recursion", "key", "fine", "nofs", "empty"], 0

    def read(self, ref: str) -> EcgRecord:
        if ref == "overflow":
            int(float("inf"))
        if ref == "recursion":
            raise RecursionError("maximum recursion depth exceeded")
        if ref == "key":
            return {}["missing"]
        signal = np.zeros((12, 0 if ref == "empty" else 1000), np.float32)
        signal[0, 5:6] = np.nan  # one invalid sample the reader forgot to count
        return EcgRecord(id=ref, signal=signal, fs=float("nan") if ref == "nofs" else 100.0)


def test_base_class_turns_any_per_record_exception_into_a_counted_skip(tmp_path):
    reader = _Exploding(tmp_path)
    records = list(reader)
    assert [r.id for r in records] == ["fine"]
    assert records[0].meta["nan_samples"] == 1 and np.isfinite(records[0].signal).all()
    assert reader.summary.skipped == {"reader error: OverflowError": 1, "reader error: RecursionError": 1,
                                      "reader error: KeyError": 1, "sampling rate out of range": 1,
                                      "empty signal": 1}


def test_skip_pickles_with_its_reason_and_data_error_passes_through(tmp_path):
    import pickle

    from etp_search.readers.base import check_record

    again = pickle.loads(pickle.dumps(SkipRecord("malformed header", "x.hea: bad\nline")))
    assert again.reason == "malformed header" and str(again) == "malformed header: x.hea: bad line"

    class _TableBroken(_Exploding):
        def read(self, ref: str) -> EcgRecord:
            raise DataError("table.csv has no column 'x'")

    with pytest.raises(DataError):
        _TableBroken(tmp_path).read("fine")
    with pytest.raises(SkipRecord, match="not a record"):
        check_record(None, "r")


# --- every verb: index, info, prepare and query --ecg count the same skips ------------------

def _broken_ptbxl(example_ptbxl: Path, root: Path) -> dict[str, int]:
    root = _copy(example_ptbxl, root)
    _edit_header(root / "records100/00000/00038_lr.hea", _first_gain("1000.0(1e400)/mV"))
    _edit_header(root / "records100/00000/00040_lr.hea", _record_field(2, "0.01"))
    _zero_samples(root, "records100/00000/00057_lr")
    _edit_cell(root, "59", "strat_fold", "1e999")
    _edit_cell(root, "63", "patient_id", "inf")
    _edit_cell(root, "65", "scp_codes", "{'NORM': None}")
    _edit_cell(root, "75", "scp_codes", "-" * 200_000 + "1")
    return {"malformed header": 1, "sampling rate out of range": 1, "empty signal": 1, "malformed strat_fold": 1,
            "malformed patient_id": 1, "malformed scp_codes": 2}


def _tiny_checkpoint(path: Path) -> Path:
    from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), path)
    return path


def test_index_info_and_prepare_count_every_bad_record_and_go_on(example_ptbxl, tmp_path, monkeypatch):
    from etp_search.cli import _register, app
    from etp_search.export import index_data

    expected = _broken_ptbxl(example_ptbxl, tmp_path / "ptbxl")
    n_bad = sum(expected.values())
    summary = index_data(tmp_path / "ptbxl", tmp_path / "store.h5", _tiny_checkpoint(tmp_path / "ck"),
                         batch_size=8, workers=0, progress=False)
    assert summary["skipped"] == expected and summary["written"] == 50 - n_bad
    _register()
    cli = CliRunner()
    info = cli.invoke(app, ["info", str(tmp_path / "ptbxl"), "--workers", "0", "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["skipped"] == expected
    monkeypatch.chdir(tmp_path)
    prep = cli.invoke(app, ["prepare", str(tmp_path / "ptbxl"), "--workers", "0", "--json"])
    assert prep.exit_code == 0, prep.output
    out = json.loads(prep.stdout)
    assert out["skipped"] == expected and out["records"] == 50 - n_bad


@pytest.mark.parametrize("edit, words", [
    (_record_field(2, "1e9"), "sampling rate out of range"),
    (_first_gain("1000.0(1e400)/mV"), "malformed header"),
    (_record_field(3, "0"), "empty signal"),
])
def test_query_ecg_of_a_bad_file_is_one_line(example_ptbxl, tmp_path, edit, words):
    from etp_search.cli import _register, app
    from etp_search.export import index_data

    good = _wfdb_copy(example_ptbxl, tmp_path / "good", ("00009_lr",))
    store = tmp_path / "store.h5"
    index_data(good, store, _tiny_checkpoint(tmp_path / "ck"), batch_size=8, workers=0, progress=False)
    bad = _wfdb_copy(example_ptbxl, tmp_path / "bad", ("00017_lr",))
    _edit_header(bad / "00017_lr.hea", edit)
    if words == "empty signal":
        (bad / "00017_lr.dat").write_bytes(b"")
    _register()
    res = CliRunner().invoke(app, ["query", "--store", str(store), "--ecg", str(bad / "00017_lr.hea"), "-k", "1"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]


@pytest.mark.parametrize("label", ["0", "-1", "10", "inf", "1e999", "2.5", "x"])
def test_reference_label_outside_one_to_nine_is_one_table_error(example_ptbxl, tmp_path, label):
    # "0" and "-1" used to index the class list from its end: record labelled STE/PVC without a word.
    root = _cpsc_struct(tmp_path, example_ptbxl)
    (root / "REFERENCE.csv").write_text(f"Recording,First_label\nA0001,1\nA0002,{label}\n")
    with pytest.raises(DataError, match="not a class number 1..9") as err:
        open_dataset(root)
    assert "\n" not in str(err.value)


def _statements(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = root / "scp_statements.csv"
    edit(pd.read_csv(path, index_col=0)).to_csv(path)


@pytest.mark.parametrize("name, damage, words", [
    ("empty", lambda r: (r / "scp_statements.csv").write_bytes(b""), "cannot be read as CSV"),
    ("binary", lambda r: (r / "scp_statements.csv").write_bytes(bytes(range(256)) * 4), "cannot be read as CSV"),
    ("blank descriptions", lambda r: _statements(r, lambda t: t.assign(description=np.nan)), "no description for"),
    ("a code twice", lambda r: _statements(r, lambda t: pd.concat([t, t.iloc[:1]])), "twice"),
    ("flags as words", lambda r: _statements(r, lambda t: t.assign(rhythm="yes")), "column 'rhythm'"),
])
def test_damaged_scp_statements_is_one_table_error(example_ptbxl, tmp_path, name, damage, words):
    # Before: a raw pandas exception, or every record's English report silently read "nan, nan".
    root = _copy(example_ptbxl, tmp_path / "ptbxl")
    damage(root)
    with pytest.raises(DataError, match=words) as err:
        open_dataset(root)
    assert "\n" not in str(err.value) and "scp_statements.csv" in str(err.value)


def test_two_ids_naming_one_signal_file_is_one_table_error(example_ptbxl, tmp_path):
    # Two ecg_ids reading one signal would store the same ECG twice under different ids.
    root = _copy(example_ptbxl, tmp_path / "ptbxl")
    _edit_cell(root, "17", "filename_lr", "records100/00000/00009_lr")
    with pytest.raises(DataError, match="more than one ecg_id"):
        open_dataset(root)


def test_metadata_outside_what_the_pipeline_stores_is_a_skip_for_every_reader(tmp_path):
    # A generic NumPy-folder table with strat_fold 1e20 ended `prepare` in an OverflowError (int16 column).
    class _Meta(_Exploding):
        def read(self, ref: str) -> EcgRecord:
            meta = {"overflow": {"strat_fold": 10 ** 20}, "recursion": {"sex": 7}, "key": {"age": float("inf")},
                    "nofs": {"patient_id": -5}, "empty": {"strat_fold": 2.5}}.get(ref, {"strat_fold": -1, "age": 40.0})
            return EcgRecord(id=ref, signal=np.ones((12, 1000), np.float32), fs=100.0, meta=meta)

    reader = _Meta(tmp_path)
    assert [r.id for r in reader] == ["fine"]
    assert reader.summary.skipped == {"malformed strat_fold": 2, "malformed sex": 1, "malformed age": 1,
                                      "malformed patient_id": 1}


def test_prepare_of_a_numpy_folder_with_an_absurd_fold_counts_it(tmp_path, monkeypatch):
    from etp_search.cli import _register, app

    signals = tmp_path / "npy" / "signals"
    signals.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(1000) / 100.0
    for rid in ("1", "2", "3"):  # 10 s at 100 Hz, samples x leads, beats at 1.2 Hz so the rate check passes
        beat = np.sin(2 * np.pi * 1.2 * t) ** 15
        np.save(signals / f"{rid}.npy", (beat[:, None] + 0.01 * rng.normal(size=(1000, 12))).astype(np.float32))
    (tmp_path / "npy" / "meta.csv").write_text("id,report,labels,strat_fold\n1,a,AFIB,1e20\n2,b,SR,3\n3,c,SR,4\n")
    (tmp_path / "npy" / "etp-arrays.json").write_text(json.dumps(
        {"format": "npy-folder", "signals": "signals", "fs": 100, "layout": "samples x leads", "leads": "standard",
         "unit": "mV", "table": "meta.csv", "table_convention": "generic"}))
    _register()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["prepare", str(tmp_path / "npy"), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["skipped"] == {"malformed strat_fold": 1} and out["records"] == 2


# --- layout detection never blocks or reads without bound ----------------------------------------

def _detect_within(path: Path, seconds: float = 20.0) -> str:
    import threading

    from etp_search.readers import detect_format

    out: dict[str, object] = {}
    worker = threading.Thread(target=lambda: out.update(fmt=detect_format(path)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"detect_format({path}) blocked"
    return str(out["fmt"])


def test_detection_passes_over_a_fifo_named_like_a_header(example_ptbxl, tmp_path):
    import os

    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    os.mkfifo(root / "00000_aa.hea")  # sorts first: opening it for reading would wait for a writer forever
    assert _detect_within(root) == "wfdb"
    reader = open_dataset(root)
    records = list(reader)
    assert "00000_aa" not in {r.id for r in records} and len(records) == len(reader.refs()) - 1
    assert reader.summary.skipped.get("malformed header") == 1


def test_detection_reads_a_bounded_prefix_of_a_huge_header(example_ptbxl, tmp_path, monkeypatch):
    from etp_search.readers import wfdb_io

    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    first = sorted(root.glob("*.hea"))[0]
    first.write_bytes(first.read_bytes() + b"# " + b"x" * (3 << 20) + b"\n")
    sizes: list[int] = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(".hea") and "b" in mode:
            real_read = fh.read
            fh.read = lambda n=-1: (sizes.append(n), real_read(n))[1]
        return fh

    monkeypatch.setattr("builtins.open", counting_open)
    assert _detect_within(root) == "wfdb"
    assert sizes and all(0 < n <= wfdb_io.MAX_HEADER_BYTES for n in sizes)


def test_an_unlistable_subfolder_is_named_not_silently_skipped(example_ptbxl, tmp_path, monkeypatch, caplog):
    import os

    from etp_search import readers

    root = _wfdb_copy(example_ptbxl, tmp_path / "w")
    (root / "locked").mkdir()
    real_listdir = os.listdir

    def listdir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(readers.os, "listdir", listdir)
    with caplog.at_level(logging.WARNING, logger="etp_search.readers"):
        readers._has_bare_mat(root)
    assert any("locked" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)

"""Broken input, made here from copies of real records: each is a counted skip or one DataError line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from etp_search.errors import DataError
from etp_search.readers import SkipRecord, open_dataset

REC = "records100/00000/00009_lr"


@pytest.fixture()
def ptbxl_copy(example_ptbxl: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ptbxl"
    shutil.copytree(example_ptbxl, root)
    return root


def _skip_reason(reader, ref: str) -> str:
    with pytest.raises(SkipRecord) as err:
        reader.read(ref)
    return err.value.reason


def _set_length(hea: Path, n: int) -> None:
    lines = hea.read_text().splitlines()
    first = lines[0].split()
    first[3] = str(n)
    hea.write_text("\n".join([" ".join(first), *lines[1:]]) + "\n")


def test_truncated_dat_is_counted_and_the_rest_is_read(ptbxl_copy: Path) -> None:
    dat = ptbxl_copy / f"{REC}.dat"
    data = dat.read_bytes()
    dat.write_bytes(data[: len(data) // 2 + 5])  # cut inside a frame
    reader = open_dataset(ptbxl_copy)
    records = list(reader)
    assert len(records) == 49 and "9" not in {r.id for r in records}
    assert reader.summary.skipped == {"truncated signal": 1} and reader.summary.read == 49
    assert "1 skipped (truncated signal: 1)" in reader.summary.line()


@pytest.mark.parametrize("length", [2000, 500])
def test_header_that_lies_about_its_length(ptbxl_copy: Path, length: int) -> None:
    _set_length(ptbxl_copy / f"{REC}.hea", length)
    assert _skip_reason(open_dataset(ptbxl_copy), "9") == "header length mismatch"


def test_extra_bytes_after_the_signal(ptbxl_copy: Path) -> None:
    dat = ptbxl_copy / f"{REC}.dat"
    dat.write_bytes(dat.read_bytes() + bytes(24 * 10))
    assert _skip_reason(open_dataset(ptbxl_copy), "9") == "header length mismatch"


@pytest.mark.parametrize("first_line", ["00009_lr twelve 100 1000", "", "00009_lr 12 abc"])
def test_malformed_first_header_line(ptbxl_copy: Path, first_line: str) -> None:
    hea = ptbxl_copy / f"{REC}.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([first_line, *lines[1:]]) + "\n")
    assert _skip_reason(open_dataset(ptbxl_copy), "9") == "malformed header"


def _wfdb_folder(example_ptbxl: Path, root: Path, names: list[str], nan_lead: int | None = None) -> None:
    raw = wfdb.rdrecord(str(example_ptbxl / REC))
    signal = raw.p_signal.copy()
    if nan_lead is not None:
        signal[:, nan_lead] = np.nan
    root.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp("rec", fs=100, units=["mV"] * 12, sig_name=names, p_signal=signal, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(root))


def test_nan_filled_lead_is_skipped(example_ptbxl: Path, tmp_path: Path) -> None:
    raw = wfdb.rdrecord(str(example_ptbxl / REC))
    _wfdb_folder(example_ptbxl, tmp_path, list(raw.sig_name), nan_lead=4)
    reader = open_dataset(tmp_path)
    assert _skip_reason(reader, "rec") == "all-NaN lead"
    assert list(reader) == [] and reader.summary.skipped == {"all-NaN lead": 1}


def test_isolated_nan_samples_are_zeroed_and_counted(example_ptbxl: Path, tmp_path: Path) -> None:
    raw = wfdb.rdrecord(str(example_ptbxl / REC))
    signal = raw.p_signal.copy()
    signal[10:13, 2] = np.nan
    wfdb.wrsamp("rec", fs=100, units=["mV"] * 12, sig_name=list(raw.sig_name), p_signal=signal,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    rec = open_dataset(tmp_path).read("rec")
    assert rec.meta["nan_samples"] == 3 and np.all(rec.signal[2, 10:13] == 0) and np.isfinite(rec.signal).all()


def test_no_recognisable_lead_is_unknown_lead(example_ptbxl: Path, tmp_path: Path) -> None:
    _wfdb_folder(example_ptbxl, tmp_path, [f"ch{i}" for i in range(12)])
    assert _skip_reason(open_dataset(tmp_path), "rec") == "unknown lead"


def test_missing_signal_file(example_ptbxl: Path, tmp_path: Path) -> None:
    raw = wfdb.rdrecord(str(example_ptbxl / REC))
    _wfdb_folder(example_ptbxl, tmp_path, list(raw.sig_name))
    (tmp_path / "rec.dat").unlink()
    assert _skip_reason(open_dataset(tmp_path, fmt="wfdb"), "rec") == "missing signal file"


@pytest.mark.needs_shared_data
def test_cinc_mat_without_val(shared_cpsc: Path, tmp_path: Path) -> None:
    shutil.copy(shared_cpsc / "cinc2020" / "A0002.hea", tmp_path / "A0002.hea")
    val = scipy.io.loadmat(shared_cpsc / "cinc2020" / "A0002.mat")["val"]
    scipy.io.savemat(tmp_path / "A0002.mat", {"signal": val})
    assert _skip_reason(open_dataset(tmp_path), "A0002") == "missing variable"
    scipy.io.savemat(tmp_path / "A0002.mat", {"val": val[:, :1000]})  # shorter than the header says
    assert _skip_reason(open_dataset(tmp_path), "A0002") == "header length mismatch"


def test_original_cpsc_mat_without_struct_or_with_nan_lead(example_ptbxl: Path, tmp_path: Path) -> None:
    data = wfdb.rdrecord(str(example_ptbxl / REC)).p_signal.T
    scipy.io.savemat(tmp_path / "A0001.mat", {"val": data})
    nan = data.copy()
    nan[7] = np.nan
    scipy.io.savemat(tmp_path / "A0002.mat", {"ECG": {"sex": "Female", "age": 40.0, "data": nan}})
    scipy.io.savemat(tmp_path / "A0003.mat", {"ECG": {"sex": "Female", "age": 40.0, "data": data[:6]}})
    (tmp_path / "A0004.mat").write_bytes(b"not a matlab file at all")
    (tmp_path / "REFERENCE.csv").write_text("Recording,First_label\nA0001,1\nA0002,2\nA0003,1\nA0004,1\n")
    reader = open_dataset(tmp_path)
    assert reader.format_name == "cpsc2018" and list(reader) == []
    assert reader.summary.skipped == {"missing header": 1, "all-NaN lead": 1, "bad signal shape": 1,
                                      "unreadable signal file": 1}


def test_mat_skip_messages_are_one_line_with_a_fix(example_ptbxl: Path, tmp_path: Path) -> None:
    from etp_search.readers.cpsc import Cpsc2018Reader

    data = wfdb.rdrecord(str(example_ptbxl / REC)).p_signal.T
    scipy.io.savemat(tmp_path / "A0001.mat", {"val": data})  # CinC .mat whose .hea was left behind
    scipy.io.savemat(tmp_path / "A0002.mat", {"something": data})
    reader = Cpsc2018Reader(tmp_path)
    with pytest.raises(SkipRecord) as cinc:
        reader.read("A0001")
    assert cinc.value.reason == "missing header" and "put A0001.hea beside it" in str(cinc.value)
    with pytest.raises(SkipRecord) as other:
        reader.read("A0002")
    msg = str(other.value)
    assert other.value.reason == "missing variable" and "; pass a CPSC2018 .mat" in msg
    assert "\n" not in msg and msg.count("(") == msg.count(")")


def test_empty_folder_names_the_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path)
    message = str(err.value)
    assert "no ECG dataset found" in message and "ptbxl_database.csv" in message and "record_list.csv" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope")


def test_reference_csv_missing_column(example_ptbxl: Path, tmp_path: Path) -> None:
    data = wfdb.rdrecord(str(example_ptbxl / REC)).p_signal.T
    scipy.io.savemat(tmp_path / "A0001.mat", {"ECG": {"sex": "Male", "age": 60.0, "data": data}})
    (tmp_path / "REFERENCE.csv").write_text("Record,Label\nA0001,1\n")
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path)
    assert "'Recording'" in str(err.value) and "REFERENCE.csv" in str(err.value)


def test_unreadable_scp_codes_cell(ptbxl_copy: Path) -> None:
    csv = ptbxl_copy / "ptbxl_database.csv"
    text = csv.read_text()
    csv.write_text(text.replace("\"{'NORM': 100.0, 'SR': 0.0}\"", "\"{'NORM': 100.0, 'SR': \"", 1))
    reader = open_dataset(ptbxl_copy)
    assert len(list(reader)) + reader.summary.n_skipped == 50
    assert reader.summary.skipped.get("malformed scp_codes") == 1


def test_ptbxl_table_without_any_signal_files(ptbxl_copy: Path) -> None:
    shutil.rmtree(ptbxl_copy / "records100")
    with pytest.raises(DataError, match="none of the 50 records.*--sampling-rate 500"):
        open_dataset(ptbxl_copy).refs()

"""PTB-XL reader on real data: the shipped 50 examples and the shared partial download."""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from etp_search.errors import DataError
from etp_search.readers import detect_format, open_dataset
from etp_search.records import STANDARD_LEADS


def test_example_detected_and_read_in_full(example_ptbxl: Path) -> None:
    assert detect_format(example_ptbxl) == "ptbxl"
    reader = open_dataset(example_ptbxl)
    assert reader.format_name == "ptbxl" and reader.fs == 100.0
    refs = reader.refs()
    assert len(refs) == 50 and refs == sorted(refs, key=int)
    records = list(reader)
    assert reader.summary.to_dict() == {"found": 50, "missing_files": 0, "skipped": {}, "read": 50}
    assert "50 records found" in reader.summary.line()
    for rec in records:
        assert rec.signal.shape == (12, 1000) and rec.signal.dtype == np.float32
        assert rec.leads == STANDARD_LEADS
        assert set(rec.meta) >= {"age", "sex", "strat_fold", "patient_id", "source", "missing_leads", "texts"}
        assert rec.meta["strat_fold"] in (9, 10) and rec.meta["missing_leads"] == []
        assert set(rec.meta["texts"]) == {"scp_en", "report"} and rec.text == rec.meta["texts"]["scp_en"]
    assert sum("AFIB" in r.labels for r in records) == 4


def test_signal_equals_wfdb_physical_values_in_standard_order(example_ptbxl: Path) -> None:
    reader = open_dataset(example_ptbxl)
    for rec in reader:  # all 50: the numpy fast path must agree with wfdb everywhere
        raw = wfdb.rdrecord(str(example_ptbxl / rec.meta["source"]))
        names = [n.upper() for n in raw.sig_name]
        for i, lead in enumerate(STANDARD_LEADS):
            np.testing.assert_allclose(rec.signal[i], raw.p_signal[:, names.index(lead.upper())], atol=1e-6)


def test_row_metadata_and_text_sources(example_ptbxl: Path) -> None:
    table = pd.read_csv(example_ptbxl / "ptbxl_database.csv", index_col="ecg_id")
    rec = open_dataset(example_ptbxl, text_source="report").read("318")
    row = table.loc[318]
    assert rec.text == row["report"].strip()
    assert rec.labels == {k: float(v) for k, v in ast.literal_eval(row["scp_codes"]).items()}
    assert rec.meta["age"] == row["age"] and rec.meta["sex"] == row["sex"]
    assert rec.meta["strat_fold"] == 10 and rec.meta["patient_id"] == int(row["patient_id"])
    assert rec.meta["source"] == row["filename_lr"]
    assert "atrial fibrillation" in rec.meta["texts"]["scp_en"]
    as_text = pd.read_csv(example_ptbxl / "ptbxl_database.csv", dtype=str, keep_default_na=False)
    axis = as_text.set_index("ecg_id").loc["318", "heart_axis"]
    by_column = open_dataset(example_ptbxl, text_source="column:heart_axis").read("318")
    assert by_column.text == axis and by_column.meta["texts"]["column:heart_axis"] == axis


def test_bad_options_raise_one_line_data_errors(example_ptbxl: Path) -> None:
    with pytest.raises(DataError, match="100 and 500"):
        open_dataset(example_ptbxl, sampling_rate=250)
    with pytest.raises(DataError, match="unknown text source 'german'"):
        open_dataset(example_ptbxl, text_source="german")
    with pytest.raises(DataError, match="no column 'translation'"):
        open_dataset(example_ptbxl, text_source="column:translation")
    with pytest.raises(DataError, match="unknown dataset format"):
        open_dataset(example_ptbxl, fmt="edf")


def test_missing_column_names_column_and_file(example_ptbxl: Path, tmp_path: Path) -> None:
    shutil.copytree(example_ptbxl, tmp_path / "ptbxl")
    csv = tmp_path / "ptbxl" / "ptbxl_database.csv"
    pd.read_csv(csv).drop(columns=["scp_codes"]).to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "ptbxl")
    assert "'scp_codes'" in str(err.value) and str(csv) in str(err.value) and "\n" not in str(err.value)


def test_partial_download_counts_missing_files_once(example_ptbxl: Path, tmp_path: Path) -> None:
    root = tmp_path / "ptbxl"
    shutil.copytree(example_ptbxl, root)
    (root / "records100/00000/00009_lr.dat").unlink()  # .hea without .dat counts as absent
    (root / "records100/00000/00017_lr.hea").unlink()
    reader = open_dataset(root)
    assert "9" not in reader.refs() and "17" not in reader.refs()
    assert reader.summary.found == 48 and reader.summary.missing_files == 2
    assert "2 listed without signal files" in reader.summary.line()


def test_reader_pickles_for_worker_processes(example_ptbxl: Path) -> None:
    reader = open_dataset(example_ptbxl)
    clone = pickle.loads(pickle.dumps(reader))
    ref = reader.refs()[3]
    np.testing.assert_array_equal(clone.read(ref).signal, reader.read(ref).signal)


@pytest.mark.needs_shared_data
def test_shared_partial_download_counts(shared_ptbxl: Path) -> None:
    low = open_dataset(shared_ptbxl)
    assert len(low.refs()) == 1646
    assert low.summary.found == 1646 and low.summary.missing_files == 21837 - 1646
    high = open_dataset(shared_ptbxl, sampling_rate=500)
    assert high.fs == 500.0 and len(high.refs()) == 500 and high.summary.missing_files == 21837 - 500
    folds = pd.Series([low.row(r)["strat_fold"] for r in low.refs()]).astype(int).value_counts()
    assert folds.sort_index().to_dict() == {1: 214, 2: 179, 3: 179, 4: 193, 5: 208, 6: 156, 7: 197, 8: 173,
                                             9: 81, 10: 66}


@pytest.mark.needs_shared_data
def test_shared_500hz_signal_equals_wfdb(shared_ptbxl: Path) -> None:
    reader = open_dataset(shared_ptbxl, sampling_rate=500)
    rec = reader.read("42")
    assert rec.signal.shape == (12, 5000) and rec.meta["source"] == "records500/00000/00042_hr"
    raw = wfdb.rdrecord(str(shared_ptbxl / "records500/00000/00042_hr"))
    assert [n.upper() for n in raw.sig_name] == [n.upper() for n in STANDARD_LEADS]
    np.testing.assert_allclose(rec.signal, raw.p_signal.T, atol=1e-6)

"""CPSC2018 in both layouts: CinC .hea/.mat (real records) and original MATLAB structs (built here)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from etp_search.labels import get_task
from etp_search.readers import detect_format, open_dataset
from etp_search.readers.cpsc import Cpsc2018Reader
from etp_search.records import STANDARD_LEADS

pytestmark = pytest.mark.needs_shared_data


def test_cinc_signals_equal_wfdb_physical_values(shared_cpsc: Path) -> None:
    reader = open_dataset(shared_cpsc / "cinc2020")
    assert reader.format_name == "cinc" and reader.fs == 500.0
    for ref in ("A0001", "A0004", "A0010"):
        rec = reader.read(ref)
        raw = wfdb.rdrecord(str(shared_cpsc / "cinc2020" / ref))
        assert list(raw.sig_name) == list(STANDARD_LEADS)
        assert rec.signal.shape == (12, raw.sig_len)  # whole record, no cropping here
        np.testing.assert_allclose(rec.signal, raw.p_signal.T, atol=1e-6)


def test_cinc_under_dataset_root_uses_reference_labels(shared_cpsc: Path) -> None:
    assert detect_format(shared_cpsc) == "cinc"
    reader = open_dataset(shared_cpsc)
    records = {r.id: r for r in reader}
    assert sorted(records) == [f"A{i:04d}" for i in range(1, 11)]
    assert reader.summary.found == 10 and reader.summary.missing_files == 6877 - 10
    assert reader.summary.read == 10 and not reader.summary.skipped
    a1 = records["A0001"]
    assert a1.labels == {"RBBB": 1.0} and a1.text == "right bundle branch block"
    assert a1.meta["age"] == 74.0 and a1.meta["sex"] == 0 and a1.meta["dx_snomed"] == ["59118001"]
    assert a1.meta["label_source"] == "REFERENCE.csv" and a1.meta["source"] == "cinc2020/A0001"
    # REFERENCE (first row per record) against the CSV read independently
    import csv

    with open(shared_cpsc / "REFERENCE.csv") as f:
        first = {row["Recording"]: int(row["First_label"]) for row in csv.DictReader(f)}
    task = get_task("cpsc2018")
    for rid, rec in records.items():
        assert task.vector(rec.labels)[first[rid] - 1] == 1.0
    assert pickle.loads(pickle.dumps(reader)).read("A0002").text == records["A0002"].text


def test_cinc_without_reference_labels_from_dx(shared_cpsc: Path, tmp_path: Path) -> None:
    for ext in (".hea", ".mat"):
        shutil.copy(shared_cpsc / "cinc2020" / f"A0001{ext}", tmp_path / f"A0001{ext}")
    header = (tmp_path / "A0001.hea").read_text().replace("#Dx: 59118001", "#Dx: 59118001,164884008,999999")
    (tmp_path / "A0001.hea").write_text(header)
    rec = open_dataset(tmp_path).read("A0001")
    assert rec.labels == {"RBBB": 1.0, "VEB": 1.0, "snomed:999999": 1.0}
    assert rec.text == "right bundle branch block, ventricular ectopics, SNOMED CT 999999"
    assert rec.meta["label_source"] == "#Dx"
    vec = get_task("cpsc2018").vector(rec.labels)
    assert vec.tolist() == [0, 0, 0, 0, 1, 0, 1, 0, 0]


def _write_original(shared_cpsc: Path, root: Path, refs: list[str]) -> None:
    """Original CPSC2018 layout (MATLAB struct ECG: sex, age, data 12xN mV) from real CinC signals."""
    root.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        raw = wfdb.rdrecord(str(shared_cpsc / "cinc2020" / ref))
        comments = dict(c.split(": ", 1) for c in raw.comments)
        scipy.io.savemat(root / f"{ref}.mat", {"ECG": {"sex": comments["Sex"], "age": float(comments["Age"]),
                                                     "data": raw.p_signal.T}})
    shutil.copy(shared_cpsc / "REFERENCE.csv", root.parent / "REFERENCE.csv")


def test_original_matlab_struct_layout(shared_cpsc: Path, tmp_path: Path) -> None:
    root = tmp_path / "cpsc" / "TrainingSet1"
    _write_original(shared_cpsc, root, ["A0001", "A0003"])
    assert detect_format(root) == "cpsc2018"
    reader = open_dataset(root)
    assert reader.fs == 500.0 and reader.refs() == ["A0001", "A0003"]
    recs = list(reader)
    raw = wfdb.rdrecord(str(shared_cpsc / "cinc2020" / "A0003"))
    np.testing.assert_allclose(recs[1].signal, raw.p_signal.T, atol=1e-6)
    assert recs[1].labels == {"AF": 1.0} and recs[1].text == "atrial fibrillation"
    assert recs[0].meta["sex"] == 0 and recs[0].meta["age"] == 74.0 and recs[1].meta["sex"] == 1
    assert reader.summary.missing_files == 6877 - 2
    single = Cpsc2018Reader(root)  # one file, as `query --ecg X.mat` reads it: no folder listing
    assert single.read("A0003").labels == {"AF": 1.0} and single._refs is None


def test_original_layout_multi_label_text(shared_cpsc: Path, tmp_path: Path) -> None:
    root = tmp_path / "cpsc"
    _write_original(shared_cpsc, root, ["A0001"])
    (tmp_path / "REFERENCE.csv").write_text("Recording,First_label,Second_label,Third_label\nA0001,5,7,\n")
    rec = open_dataset(root).read("A0001")
    assert rec.labels == {"RBBB": 1.0, "PVC": 1.0}
    assert rec.text == "right bundle branch block, premature ventricular contraction"

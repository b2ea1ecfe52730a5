"""Generic WFDB folders and MIMIC-IV-ECG, with files written here from real PTB-XL signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from etp_search.errors import DataError
from etp_search.readers import detect_format, open_dataset, standard_lead
from etp_search.records import STANDARD_LEADS

REF = "records100/00000/00009_lr"


def _real(example_ptbxl: Path) -> wfdb.Record:
    return wfdb.rdrecord(str(example_ptbxl / REF))


def _write(path: Path, p_signal: np.ndarray, names: list[str], fs: float = 100, units: str = "mV",
           comments: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(path.name, fs=fs, units=[units] * len(names), sig_name=names, p_signal=p_signal,
                fmt=["16"] * len(names), adc_gain=[1000.0 if units == "mV" else 1.0] * len(names),
                baseline=[0] * len(names), comments=comments or [], write_dir=str(path.parent))


def test_lead_names_in_any_case() -> None:
    assert [standard_lead(n) for n in ("i", "avr", "AVL", "V1 ", "aVf", "lead II", "MLII", "x")] == \
        ["I", "aVR", "aVL", "V1", "aVF", "II", "II", None]


def test_shuffled_lowercase_leads_missing_and_extra_channels(example_ptbxl: Path, tmp_path: Path) -> None:
    raw = _real(example_ptbxl)
    # keep 10 leads, shuffle them, lower-case them, add a respiration channel
    order = [11, 3, 0, 7, 5, 2, 9, 6, 1, 10]
    names = [raw.sig_name[i].lower() for i in order] + ["RESP"]
    signal = np.column_stack([raw.p_signal[:, order], np.zeros(raw.sig_len)])
    _write(tmp_path / "site_a" / "rec1", signal, names, comments=["Age: 63", "Sex: Female", "sinus rhythm"])
    assert detect_format(tmp_path) == "wfdb"
    reader = open_dataset(tmp_path)
    assert reader.refs() == ["site_a/rec1"]
    rec = reader.read("site_a/rec1")
    assert rec.meta["missing_leads"] == ["aVL", "V3"] and rec.meta["dropped_channels"] == ["RESP"]
    for i, lead in enumerate(STANDARD_LEADS):
        expected = np.zeros(raw.sig_len) if lead in ("aVL", "V3") else \
            raw.p_signal[:, [n.upper() for n in raw.sig_name].index(lead.upper())]
        np.testing.assert_allclose(rec.signal[i], expected, atol=1e-3)
    assert rec.text == "Age: 63; Sex: Female; sinus rhythm" and rec.meta["texts"]["report"] == rec.text
    assert rec.meta["age"] == 63.0 and rec.meta["sex"] == 1


def test_microvolt_units_become_millivolts(example_ptbxl: Path, tmp_path: Path) -> None:
    raw = _real(example_ptbxl)
    _write(tmp_path / "uv", np.round(raw.p_signal * 1000), list(raw.sig_name), units="uV")
    rec = open_dataset(tmp_path).read("uv")
    np.testing.assert_allclose(rec.signal, raw.p_signal.T, atol=1e-3)


def test_wfdb_folder_rejects_column_text_source(example_ptbxl: Path, tmp_path: Path) -> None:
    raw = _real(example_ptbxl)
    _write(tmp_path / "r", raw.p_signal, list(raw.sig_name))
    assert open_dataset(tmp_path, text_source="report").text_source == "report"
    with pytest.raises(DataError, match="no column 'translation'"):
        open_dataset(tmp_path, text_source="column:translation")


def _mimic(example_ptbxl: Path, root: Path, with_measurements: bool = True) -> None:
    """Tiny MIMIC-IV-ECG folder in the published layout, signals from real PTB-XL records."""
    rows, meas = [], []
    for k, ecg in enumerate(("00009", "00017", "00038")):
        raw = wfdb.rdrecord(str(example_ptbxl / f"records100/00000/{ecg}_lr"))
        subject, study = 10000032 + k, 40689238 + k
        rel = f"files/p1000/p{subject}/s{study}/{study}"
        # MIMIC stores aVF before aVL: the reader must put them back
        names = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
        cols = [[n.upper() for n in raw.sig_name].index(n.upper()) for n in names]
        _write(root / rel, raw.p_signal[:, cols], names, fs=100)
        rows.append({"subject_id": subject, "study_id": study, "file_name": study,
                     "ecg_time": f"2180-07-2{k} 08:00:00", "path": rel})
        meas.append({"subject_id": subject, "study_id": study, "cart_id": 6848296,
                     "ecg_time": f"2180-07-2{k} 08:00:00", "report_0": "Sinus rhythm",
                     "report_1": "" if k else "Possible anterior infarct - age undetermined",
                     "report_2": "Abnormal ECG", **{f"report_{i}": "" for i in range(3, 18)},
                     "bandwidth": "0.005-150 Hz", "rr_interval": 659 + k})
    rows.append({"subject_id": 1, "study_id": 1, "file_name": 1, "ecg_time": "", "path": "files/p1000/p1/s1/1"})
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)
    if with_measurements:
        pd.DataFrame(meas).to_csv(root / "machine_measurements.csv", index=False)


def test_mimic_layout(example_ptbxl: Path, tmp_path: Path) -> None:
    _mimic(example_ptbxl, tmp_path)
    assert detect_format(tmp_path) == "mimic-iv-ecg"
    reader = open_dataset(tmp_path)
    assert reader.refs() == ["40689238", "40689239", "40689240"] and reader.summary.missing_files == 1
    recs = list(reader)
    assert recs[0].text == "Sinus rhythm; Possible anterior infarct - age undetermined; Abnormal ECG"
    assert recs[1].text == "Sinus rhythm; Abnormal ECG"
    assert recs[0].meta["subject_id"] == 10000032 and recs[0].meta["study_id"] == 40689238
    assert recs[0].meta["source"] == "files/p1000/p10000032/s40689238/40689238"
    raw = _real(example_ptbxl)
    np.testing.assert_allclose(recs[0].signal, raw.p_signal.T, atol=1e-3)  # aVL/aVF restored
    rr = open_dataset(tmp_path, text_source="column:rr_interval").read("40689239")
    assert rr.text == "660"


def test_mimic_missing_column_and_missing_measurements(example_ptbxl: Path, tmp_path: Path) -> None:
    _mimic(example_ptbxl, tmp_path, with_measurements=False)
    assert open_dataset(tmp_path).read("40689238").text == ""
    csv = tmp_path / "record_list.csv"
    pd.read_csv(csv).drop(columns=["path"]).to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path)
    assert "'path'" in str(err.value) and "record_list.csv" in str(err.value)


@pytest.mark.parametrize("fmt", ["212", "16", "80", "32"])
def test_every_sample_format_agrees_with_wfdb(example_ptbxl: Path, tmp_path: Path, fmt: str) -> None:
    raw = _real(example_ptbxl)
    gain = {"80": 10.0, "212": 500.0}.get(fmt, 1000.0)  # narrow formats need a coarse gain to fit
    wfdb.wrsamp("rec", fs=100, units=["mV"] * 12, sig_name=list(raw.sig_name), p_signal=raw.p_signal,
                fmt=[fmt] * 12, adc_gain=[gain] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    expected = wfdb.rdrecord(str(tmp_path / "rec")).p_signal.T
    np.testing.assert_allclose(open_dataset(tmp_path).read("rec").signal, expected, atol=1e-6)


def test_header_comments_become_labels_for_free_label_zero_shot(tmp_path, example_ptbxl):
    """A plain WFDB folder has no label table: its header comments are the ground truth."""
    from etp_search.evaluation.prompts import match_label_keys
    from etp_search.readers import open_dataset

    src = next((example_ptbxl / "records100").rglob("*.hea")).with_suffix("")
    rec = wfdb.rdrecord(str(src))
    comments = {"a": ["Age: 61", "Sex: F", "<rhythms>: Sinus rhythm.", "Electric axis of the heart: left."],
                "b": ["Rhythm: Atrial fibrillation", "Dx: 59118001"]}
    for name, lines in comments.items():
        wfdb.wrsamp(name, fs=100, units=["mV"] * 12, sig_name=rec.sig_name, p_signal=rec.p_signal,
                    fmt=["16"] * 12, comments=lines, write_dir=str(tmp_path))
    reader = open_dataset(tmp_path, fmt="wfdb")
    labels = {r: reader.read(r).labels for r in reader.refs()}
    assert labels["a"] == {"sinus rhythm": 1.0, "electric axis of the heart: left": 1.0}
    assert labels["b"] == {"atrial fibrillation": 1.0, "right bundle branch block": 1.0}
    keys = set(labels["a"]) | set(labels["b"])
    assert match_label_keys(["Atrial fibrillation", "sinus rhythm", "flutter"], keys) == {
        "Atrial fibrillation": "atrial fibrillation", "sinus rhythm": "sinus rhythm", "flutter": None}

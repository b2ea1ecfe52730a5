"""MIMIC-IV-ECG: record_list.csv + machine_measurements.csv + WFDB files under files/.

    record_list.csv           subject_id, study_id, file_name, ecg_time, path
    machine_measurements.csv  subject_id, study_id, cart_id, ecg_time, report_0 .. report_17, ...
    files/pNNNN/pXXXXXXXX/sYYYYYYYY/YYYYYYYY.{hea,dat}

The report text is the non-empty machine statements ``report_0..report_17`` joined with "; ".
Only the joined text (not the whole measurement table) is kept, so the reader stays small enough
to pickle to worker processes at MIMIC's ~800k records.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from etp_search.errors import DataError
from etp_search.readers.base import COLUMN_PREFIX, REPORT, SCP_EN, Reader, SkipRecord, inside_root, \
    native_text_source, require_columns, require_ids
from etp_search.readers.wfdb_io import read_wfdb
from etp_search.records import EcgRecord

logger = logging.getLogger(__name__)

RECORD_LIST = "record_list.csv"
MEASUREMENTS = "machine_measurements.csv"
REPORT_COLUMNS = tuple(f"report_{i}" for i in range(18))
#: Separator between machine statements in the report text.
STATEMENT_SEPARATOR = "; "


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path} cannot be read as CSV ({type(exc).__name__}); re-download it") from None


def join_reports(table: pd.DataFrame) -> pd.Series:
    """Join the non-empty report_i cells of each row with STATEMENT_SEPARATOR."""
    cols = [c for c in REPORT_COLUMNS if c in table.columns]
    parts = table[cols].apply(lambda col: col.str.strip())
    return parts.apply(lambda row: STATEMENT_SEPARATOR.join(v for v in row if v), axis=1)


def _id_number(value: object) -> int:
    """A MIMIC id as an int, -1 when it is no plain ASCII number ("²".isdigit() is True, int() refuses it)."""
    text = str(value).strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else -1


class MimicReader(Reader):
    """Reader for the MIMIC-IV-ECG layout; record id = study_id."""

    format_name = "mimic-iv-ecg"

    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        super().__init__(root, text_source)
        self.fs = 500.0  # every MIMIC-IV-ECG record is 10 s at 500 Hz
        list_path = self.root / RECORD_LIST
        records = _read_csv(list_path)
        require_columns(records.columns, ["study_id", "path"], list_path)
        require_ids(records["study_id"].tolist(), "study_id", list_path)
        meas_path = self.root / MEASUREMENTS
        texts = pd.Series("", index=records["study_id"])
        extra_columns: dict[str, pd.Series] = {}
        meas_columns: tuple[str, ...] = ()
        if meas_path.exists():
            meas = _read_csv(meas_path)
            require_columns(meas.columns, ["study_id", "report_0"], meas_path)
            meas = meas.drop_duplicates("study_id").set_index("study_id")
            meas_columns = tuple(meas.columns)
            texts = join_reports(meas).reindex(records["study_id"]).fillna("")
        else:
            logger.warning("%s not found: MIMIC-IV-ECG records get no report text", meas_path)
        self.text_source = native_text_source(text_source, self.format_name,
                                              tuple(records.columns) + meas_columns)
        if self.text_source.startswith(COLUMN_PREFIX):
            col = self.text_source[len(COLUMN_PREFIX):]
            source = records.set_index("study_id")[col] if col in records.columns else meas[col]
            extra_columns[self.text_source] = source.reindex(records["study_id"]).fillna("").str.strip()
        keep = [c for c in ("study_id", "subject_id", "ecg_time", "path") if c in records.columns]
        self._table = records[keep].set_index("study_id", drop=False)
        self._texts = texts
        self._extra = extra_columns

    def _list_refs(self) -> tuple[list[str], int]:
        present = [os.path.exists(self.root / f"{p}.hea") for p in self._table["path"]]
        refs = [sid for sid, ok in zip(self._table.index, present) if ok]
        if not refs:
            raise DataError(f"none of the {len(present)} records of {RECORD_LIST} has its .hea under "
                            f"{self.root / 'files'}; download the files/ folder")
        return refs, len(present) - len(refs)

    def read(self, ref: str) -> EcgRecord:
        try:
            row = self._table.loc[str(ref)]
        except KeyError:
            raise SkipRecord("unknown record", f"study_id {ref} is not in {RECORD_LIST}") from None
        rel = inside_root(row["path"], f"study_id {ref}: path", self.root)
        sig = read_wfdb(self.root / rel)
        texts = {REPORT: self._texts.get(ref, "")}
        for name, column in self._extra.items():
            texts[name] = column.get(ref, "")
        subject = row.get("subject_id", "")
        meta = {"age": float("nan"), "sex": -1, "strat_fold": -1, "source": rel,
                "missing_leads": sig.missing_leads, "texts": texts,
                "subject_id": _id_number(subject), "study_id": _id_number(ref), "ecg_time": row.get("ecg_time", "")}
        if sig.dropped_channels:
            meta["dropped_channels"] = sig.dropped_channels
        if sig.nan_samples:
            meta["nan_samples"] = sig.nan_samples
        return EcgRecord(id=str(ref), signal=sig.signal, fs=sig.fs, text=texts[self.text_source], labels={},
                         meta=meta)

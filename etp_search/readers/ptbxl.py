"""PTB-XL: ptbxl_database.csv + scp_statements.csv + records100/ or records500/ (WFDB).

A partial download is normal: rows whose signal files are absent are left out of ``refs()`` and
counted once in ``summary.missing_files`` rather than reported row by row.

What a damaged table does (table-level problems are one DataError line, one row's problems skip
that record with a named reason):

- a missing required column, a duplicate or an empty ``ecg_id``: DataError (the key of every
  record is in doubt, so no record of the file is trusted);
- no ``strat_fold`` column at all (a table cut down by hand): a WARNING when the reader opens, and
  every record gets fold -1, which every verb treats as "no folds" (train splits by id hash,
  zeroshot/probe name the fallback). Why not an error: index and query need no folds;
- one row's cell that is not a valid value: its record is skipped, e.g. "malformed strat_fold" for
  ``1e999``, "malformed patient_id" for ``inf``, "malformed scp_codes" for ``{'NORM': None}``. An
  empty cell (or ``nan``) is "unknown": age nan, sex/strat_fold/patient_id -1. A wrong fold would
  put the record into the wrong split, so it is never guessed.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pandas as pd

from etp_search.errors import DataError
from etp_search.readers.base import COLUMN_PREFIX, REPORT, SCP_EN, Reader, SkipRecord, inside_root, \
    require_columns, require_ids
from etp_search.readers.wfdb_io import read_wfdb
from etp_search.records import EcgRecord
from etp_search.text import SCP_STATEMENTS_CSV, check_text_source, compose_scp_report, load_scp_statements, \
    parse_scp_codes

logger = logging.getLogger(__name__)

DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
_FILENAME_COLUMN = {100: "filename_lr", 500: "filename_hr"}


def _existing_records(root: Path, top: str) -> set[str]:
    """Relative record paths (no extension) that have both .hea and .dat under ``root/top``."""
    found: set[str] = set()
    base = root / top
    if not base.is_dir():
        return found
    for dirpath, _, files in os.walk(base):
        names = set(files)
        rel = Path(dirpath).relative_to(root)
        for f in names:
            if f.endswith(".hea") and f[:-4] + ".dat" in names:
                found.add((rel / f[:-4]).as_posix())
    return found


# Valid values of the numeric columns (PTB-XL writes age 300 for patients over 89, ids as "15709.0");
# a strat_fold must fit the signal cache's int16 column.
_RANGES = {"age": (0.0, 300.0, False), "sex": (0.0, 1.0, True), "strat_fold": (1.0, 32767.0, True),
           "patient_id": (0.0, 2.0 ** 53, True)}
_UNKNOWN = {"", "nan", "na", "none"}


def _cell(row: dict[str, str], column: str, ref: str) -> float:
    """A numeric cell: nan when empty/unknown; a value out of its column's range skips the record."""
    text = str(row.get(column, "")).strip()
    if text.lower() in _UNKNOWN:
        return math.nan
    lo, hi, integer = _RANGES[column]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (lo <= value <= hi) or (integer and not value.is_integer()):
        kind = "an integer" if integer else "a number"
        raise SkipRecord(f"malformed {column}", f"ecg_id {ref}: {column} {text[:30]!r} is not {kind} "
                         f"in {lo:g}..{hi:g} ({DATABASE_CSV} damaged?)")
    return value


def _as_int(value: float) -> int:
    return -1 if math.isnan(value) else int(value)


def row_numbers(row: dict[str, str], ref: str) -> dict[str, float | int]:
    """age (nan = unknown), sex, strat_fold and patient_id (-1 = unknown) of one ptbxl_database.csv row.

    Raises:
        SkipRecord: "malformed <column>" for a cell that is neither empty nor a valid value.
    """
    values = {col: _cell(row, col, ref) for col in _RANGES}
    return {"age": values["age"], **{col: _as_int(values[col]) for col in ("sex", "strat_fold", "patient_id")}}


class PtbxlReader(Reader):
    """Reader for the PTB-XL folder layout.

    Args:
        root: Folder holding ptbxl_database.csv.
        sampling_rate: 100 (records100/, default) or 500 (records500/).
        text_source: "scp_en" (default), "report", or "column:<name>" of ptbxl_database.csv.

    Labels are the record's ``scp_codes`` (code -> likelihood); meta holds age, sex, strat_fold,
    patient_id, source, missing_leads and texts (every text source for the record).
    """

    format_name = "ptbxl"
    fs: float  # fixed by sampling_rate

    def __init__(self, root: str | Path, sampling_rate: int | None = None, text_source: str = SCP_EN) -> None:
        super().__init__(root, text_source)
        rate = 100 if sampling_rate is None else int(sampling_rate)
        if rate not in _FILENAME_COLUMN:
            raise DataError(f"PTB-XL has sampling rates 100 and 500, not {sampling_rate}; pass --sampling-rate 100 or 500")
        self.sampling_rate = rate
        self.fs = float(rate)
        db_path = self.root / DATABASE_CSV
        if not db_path.exists():
            raise DataError(f"{db_path} not found; point to the PTB-XL folder that holds {DATABASE_CSV}")
        try:
            table = pd.read_csv(db_path, dtype=str, keep_default_na=False)
        except Exception as exc:  # an empty or binary file
            raise DataError(f"{db_path} cannot be read as CSV ({type(exc).__name__}); re-download it") from None
        self._filename_col = _FILENAME_COLUMN[rate]
        require_columns(table.columns, ["ecg_id", "scp_codes", self._filename_col], db_path)
        columns = tuple(table.columns)
        available = (SCP_EN, REPORT) if "report" in columns else (SCP_EN,)
        check_text_source(text_source, available, columns)
        self._text_column = text_source[len(COLUMN_PREFIX):] if text_source.startswith(COLUMN_PREFIX) else None
        # Only the columns a record needs travel with the reader (it is pickled to workers).
        keep = [c for c in ("ecg_id", "patient_id", "age", "sex", "strat_fold", "report", "scp_codes",
                            self._filename_col, self._text_column) if c and c in columns]
        keep = list(dict.fromkeys(keep))
        require_ids(table["ecg_id"].tolist(), "ecg_id", db_path)
        files = table[self._filename_col].str.strip()
        shared = files[(files != "") & files.duplicated()]
        if len(shared):  # two ids reading one signal would put the same ECG into the store twice
            raise DataError(f"{db_path} gives {shared.iloc[0][:60]!r} to more than one ecg_id ({self._filename_col}); "
                            "re-download it")
        if "strat_fold" not in columns:
            logger.warning("%s has no strat_fold column: every record gets fold -1 (no benchmark folds: train "
                           "splits by id hash, zeroshot/probe use all records); use the unmodified file for the "
                           "PTB-XL folds", db_path)
        # Plain dict of tuples: a pandas .loc per record cost more than reading the signal.
        self._columns = {c: i for i, c in enumerate(keep)}
        self._rows = {row[0]: row for row in table[keep].itertuples(index=False, name=None)}
        statements_path = self.root / STATEMENTS_CSV
        if not statements_path.exists():
            logger.warning("%s not found; using the copy shipped with etp-search", statements_path)
            statements_path = SCP_STATEMENTS_CSV
        self._statements = load_scp_statements(statements_path)

    def _list_refs(self) -> tuple[list[str], int]:
        top = f"records{self.sampling_rate}"
        existing = _existing_records(self.root, top)
        col = self._columns[self._filename_col]
        ids = [ecg_id for ecg_id, row in self._rows.items() if row[col] in existing]
        refs = sorted(ids, key=lambda s: (len(s), s))  # numeric order without parsing
        if not refs:
            other = 500 if self.sampling_rate == 100 else 100
            raise DataError(f"none of the {len(self._rows)} records of {DATABASE_CSV} has its signal files under "
                            f"{self.root / top}; download {top}/ or try --sampling-rate {other}")
        return refs, len(self._rows) - len(refs)

    def row(self, ref: str) -> dict[str, str]:
        """The record's ptbxl_database.csv cells (the columns the reader keeps), as text."""
        try:
            values = self._rows[str(ref)]
        except KeyError:
            raise SkipRecord("unknown record", f"ecg_id {ref} is not in {DATABASE_CSV}") from None
        return dict(zip(self._columns, values))

    def texts_for(self, row: dict[str, str], scp_codes: dict[str, float]) -> dict[str, str]:
        texts = {SCP_EN: compose_scp_report(scp_codes, self._statements)}
        if "report" in row:
            texts[REPORT] = row["report"].strip()
        if self._text_column:
            texts[self.text_source] = row[self._text_column].strip()
        return texts

    def read(self, ref: str) -> EcgRecord:
        row = self.row(ref)
        try:
            scp_codes = parse_scp_codes(row["scp_codes"])
        except ValueError as exc:
            raise SkipRecord("malformed scp_codes", f"ecg_id {ref}: {exc}") from None
        numbers = row_numbers(row, ref)  # before the signal: a bad row costs no read
        rel = inside_root(row[self._filename_col], f"ecg_id {ref}: {self._filename_col}", self.root)
        sig = read_wfdb(self.root / rel)
        if abs(sig.fs - self.fs) > 1e-6:
            raise SkipRecord("unexpected sampling rate", f"{rel}: {sig.fs} Hz, expected {self.fs}")
        texts = self.texts_for(row, scp_codes)
        meta = {
            **numbers,
            "source": rel,
            "missing_leads": sig.missing_leads,
            "texts": texts,
        }
        if sig.nan_samples:
            meta["nan_samples"] = sig.nan_samples
        if sig.dropped_channels:
            meta["dropped_channels"] = sig.dropped_channels
        return EcgRecord(id=str(ref), signal=sig.signal, fs=sig.fs, text=texts[self.text_source],
                         labels=scp_codes, meta=meta)

"""The one record type every reader yields, its metadata schema (RecordMeta), and the standard 12-lead order."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: Standard 12-lead order used everywhere in the toolkit.
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)


@dataclass
class EcgRecord:
    """One ECG with its report and labels.

    Attributes:
        id: Dataset-unique record id (PTB-XL ecg_id as a string, CPSC "A0001", a WFDB record path).
        signal: (12, L) float32 in millivolts, rows in ``STANDARD_LEADS`` order; missing leads are 0.
        fs: Sampling rate in Hz.
        text: The report text chosen by the reader's text source ("" when there is none).
        labels: Dataset-native label codes -> likelihood/weight (PTB-XL scp_codes, CPSC class names,
            SNOMED names for CinC headers). Tasks in ``etp_search.labels`` map these to multi-hot vectors.
        meta: Free metadata: age, sex, strat_fold, source file, missing_leads, texts per source, ...
    """

    id: str
    signal: np.ndarray
    fs: float
    text: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    leads: tuple[str, ...] = STANDARD_LEADS

    @property
    def duration_s(self) -> float:
        return self.signal.shape[-1] / float(self.fs)


def _num(value: Any) -> float:
    """A finite number from a reader or cache value; nan for None, "", "nan", text or inf."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "" or isinstance(value, bool):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _int(value: Any) -> int:
    """An int code, -1 when unknown (also for negative or non-integral values)."""
    v = _num(value)
    return int(v) if not math.isnan(v) and v >= 0 and v.is_integer() and v < 2 ** 63 else -1


def _leads(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(s for s in value.split(",") if s)
    return tuple(str(s) for s in value)


@dataclass(frozen=True)
class RecordMeta:
    """Record metadata as every stage after the reader sees it: one type, one "unknown" per kind.

    Unknown is nan (float), -1 (int) or "" / () (text). ``from_values`` accepts what readers put in
    ``EcgRecord.meta`` and what a signal cache stores (PTB-XL's "15709.0" patient ids, the cache's
    "" for an unknown patient, comma-joined lead names) and normalises it.
    """

    age: float = math.nan
    sex: int = -1
    strat_fold: int = -1
    patient_id: int = -1
    source: str = ""
    missing_leads: tuple[str, ...] = ()
    flagged_leads: tuple[str, ...] = ()

    @classmethod
    def from_values(cls, meta: Mapping[str, Any], flagged_leads: Any = ()) -> RecordMeta:
        src = meta.get("source")
        return cls(age=_num(meta.get("age")), sex=_int(meta.get("sex")), strat_fold=_int(meta.get("strat_fold")),
                   patient_id=_int(meta.get("patient_id")), source="" if src is None else str(src),
                   missing_leads=_leads(meta.get("missing_leads")),
                   flagged_leads=_leads(flagged_leads or meta.get("flagged_leads")))

    def store_row(self, dataset: str, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The values of ``STORE_META_SCHEMA`` for this record."""
        kept = {k: v for k, v in (flags or {}).items() if v not in (None, [], False)}
        if self.missing_leads:
            kept["missing_leads"] = list(self.missing_leads)
        row: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _SCALAR_KINDS}
        row.update(dataset=dataset, flags=kept)
        return row


#: Python type of a RecordMeta field -> store column kind.
_KIND_OF = {"float": "float", "int": "int", "str": "str"}
_SCALAR_KINDS = {f.name: _KIND_OF[str(f.type)] for f in fields(RecordMeta) if str(f.type) in _KIND_OF}

#: The embedding store's metadata columns, derived from RecordMeta (``indexing`` stays free of our
#: imports: it receives this table): the scalar fields, the dataset layout, and per-record flags.
STORE_META_SCHEMA: dict[str, str] = {**_SCALAR_KINDS, "dataset": "str", "flags": "json"}

#: The ECG projection's L2 norm before normalisation, one float per store row, written by ``index``
#: beside the STORE_META_SCHEMA columns: the store keeps unit vectors (what cosine search needs) and
#: this, so that ``probe --features projection|auto`` can read the projection, unit * norm.
NORM_COLUMN = "ecg_norm"

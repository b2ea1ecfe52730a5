"""What every reader shares: the skip signal, the summary, lead mapping and signal checks.

A reader turns one published dataset layout into ``EcgRecord`` objects, one at a time. Problems
of a single record (a truncated file, a lying header) raise ``SkipRecord`` with a short stable
reason and are counted in ``ReadSummary.skipped``; problems of the whole folder or table (no
records, a missing column) raise ``DataError`` with one line that says how to fix them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from etp_search.errors import DataError
from etp_search.records import STANDARD_LEADS, EcgRecord

logger = logging.getLogger(__name__)

#: Text sources every reader understands; PTB-XL adds "scp_en" and readers with tables "column:<name>".
REPORT = "report"
SCP_EN = "scp_en"
COLUMN_PREFIX = "column:"


class SkipRecord(Exception):
    """One record cannot be read; ``reason`` is a short stable key counted in the summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class ReadSummary:
    """Counts of one pass over a dataset.

    Attributes:
        found: Records whose files exist (``len(reader.refs())``).
        missing_files: Table rows whose signal files are absent (a partial download).
        skipped: Reason -> number of records skipped for it.
        read: Records yielded.
    """

    found: int = 0
    missing_files: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    read: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def line(self) -> str:
        """One human line, e.g. ``1646 records found, 20191 listed without signal files, ...``."""
        parts = [f"{self.found} records found"]
        if self.missing_files:
            parts.append(f"{self.missing_files} listed without signal files (partial download?)")
        parts.append(f"{self.read} read")
        if self.skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            parts.append(f"{self.n_skipped} skipped ({reasons})")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"found": self.found, "missing_files": self.missing_files,
                "skipped": dict(self.skipped), "read": self.read}


# Lead names seen in the wild, normalised (upper case, no spaces/dashes) -> standard name.
_LEAD_ALIASES: dict[str, str] = {name.upper(): name for name in STANDARD_LEADS}
_LEAD_ALIASES.update({"LEADI": "I", "LEADII": "II", "LEADIII": "III", "MLI": "I", "MLII": "II",
                      "MLIII": "III", "D1": "I", "D2": "II", "D3": "III"})
# Inverted aVR ("-aVR", Cabrera display) is deliberately not an alias: its sign differs from aVR.


def standard_lead(name: str) -> str | None:
    """Map a lead name in any case/spacing (``'avr'``, ``'V1 '``, ``'lead II'``) to STANDARD_LEADS, else None."""
    key = "".join(str(name).split()).replace("_", "").upper()
    return _LEAD_ALIASES.get(key)


def arrange_leads(signal: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Reorder channels into the standard 12-lead order.

    Missing standard leads are zero-filled; channels that are no standard lead (e.g. a respiration
    or a Frank X/Y/Z channel) are dropped. A record with no recognisable lead at all is skipped.

    Args:
        signal: (channels, L) array.
        names: Channel names, one per row of ``signal``.

    Returns:
        (12, L) float32 signal, missing standard lead names, dropped channel names.

    Raises:
        SkipRecord: "unknown lead" when no channel is a standard lead.
    """
    out = np.zeros((len(STANDARD_LEADS), signal.shape[1]), dtype=np.float32)
    seen: set[str] = set()
    dropped: list[str] = []
    for row, name in enumerate(names):
        std = standard_lead(name)
        if std is None or std in seen:  # a duplicated lead keeps its first channel
            dropped.append(str(name))
            continue
        out[STANDARD_LEADS.index(std)] = signal[row]
        seen.add(std)
    if not seen:
        raise SkipRecord("unknown lead", f"no standard 12-lead name among {list(names)}")
    missing = [lead for lead in STANDARD_LEADS if lead not in seen]
    return out, missing, dropped


def check_finite(signal: np.ndarray, names: Sequence[str] = STANDARD_LEADS) -> int:
    """Refuse all-NaN leads; zero isolated NaN/inf samples and return how many there were.

    A lead that is NaN throughout means the file holds no data for it, so the record is skipped
    rather than passed on as a flat line. Isolated invalid samples (WFDB's "no value" marker) are
    set to 0 and counted in ``meta['nan_samples']`` so the change is never silent.
    """
    bad = ~np.isfinite(signal)
    if not bad.any():
        return 0
    for row in np.flatnonzero(bad.all(axis=1)):
        raise SkipRecord("all-NaN lead", f"lead {names[row] if row < len(names) else row} has no finite value")
    signal[bad] = 0.0
    return int(bad.sum())


#: Scale factors from a WFDB physical unit to millivolts.
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


def to_millivolts(signal: np.ndarray, units: Sequence[str | None]) -> list[str]:
    """Scale rows in place to mV; returns the unit names that were unknown (left unscaled)."""
    unknown = []
    for row, unit in enumerate(units):
        factor = _UNIT_TO_MV.get(str(unit or "mV").strip().lower())
        if factor is None:
            unknown.append(str(unit))
        elif factor != 1.0:
            signal[row] *= factor
    return unknown


class Reader:
    """Base of all readers: ``refs()`` lists records cheaply, ``read(ref)`` loads one.

    Subclasses set ``format_name``, ``root``, ``fs`` and ``text_source`` and implement
    ``_list_refs`` and ``read``. Readers hold only paths and small tables so they pickle cheaply
    to worker processes; signals are read one record at a time.
    """

    format_name: str = ""

    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        self.root = Path(root)
        self.text_source = text_source
        self.fs: float | None = None
        self.summary = ReadSummary()
        self._refs: list[str] | None = None

    def _list_refs(self) -> tuple[list[str], int]:
        """Return (refs whose files exist, number of listed records whose files are missing)."""
        raise NotImplementedError

    def refs(self) -> list[str]:
        """Record ids in a deterministic order, only those whose files exist (no signal reads)."""
        if self._refs is None:
            self._refs, missing = self._list_refs()
            self.summary.found = len(self._refs)
            self.summary.missing_files = missing
            if missing:
                logger.info("%s: %d records listed without signal files (partial download?)",
                            self.root, missing)
        return list(self._refs)

    def __len__(self) -> int:
        return len(self.refs())

    def read(self, ref: str) -> EcgRecord:
        """Load one record; raises ``SkipRecord`` when it is unusable."""
        raise NotImplementedError

    def iter_records(self, refs: Sequence[str] | None = None) -> Iterator[EcgRecord]:
        """Yield records for ``refs`` (default all), counting skips in ``summary``."""
        for ref in self.refs() if refs is None else refs:
            try:
                rec = self.read(ref)
            except SkipRecord as exc:
                self.summary.skip(exc.reason)
                logger.debug("skipped %s: %s", ref, exc)
                continue
            self.summary.read += 1
            yield rec

    def __iter__(self) -> Iterator[EcgRecord]:
        return self.iter_records()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, fs={self.fs}, text_source={self.text_source!r})"


def require_columns(columns: Sequence[str], needed: Sequence[str], path: Path) -> None:
    """Raise one DataError line naming the first missing column and the file."""
    for col in needed:
        if col not in columns:
            raise DataError(f"{path} has no column '{col}'; is it the unmodified file of this dataset?")


def native_text_source(source: str, format_name: str, columns: Sequence[str] = ()) -> str:
    """Resolve a text source for a layout whose only built-in text is its own English "report".

    "scp_en" (the toolkit default) means "English statements"; datasets without SCP codes have
    their statements in English already (CPSC class names, CinC diagnoses, MIMIC machine reports),
    so it resolves to "report".
    """
    from etp_search.text import check_text_source

    if source == SCP_EN:
        logger.debug("%s has no SCP codes: text source 'scp_en' reads its English 'report'", format_name)
        return REPORT
    check_text_source(source, (REPORT,), tuple(columns))
    return source


def parse_age_sex(comments: Sequence[str]) -> tuple[float, int]:
    """Age and sex from ``Age: 74`` / ``Sex: Male`` comment lines (CinC style); (nan, -1) when absent."""
    age, sex = float("nan"), -1
    for line in comments:
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "age":
            try:
                age = float(value)
            except ValueError:
                pass
        elif key == "sex":
            sex = sex_code(value)
    return age, sex


def sex_code(value: object) -> int:
    """PTB-XL convention: 0 male, 1 female, -1 unknown."""
    v = str(value).strip().lower()
    if v in ("male", "m", "0"):
        return 0
    if v in ("female", "f", "1"):
        return 1
    return -1

"""What every reader shares: the skip signal, the summary, lead mapping and signal checks.

A reader turns one published dataset layout into ``EcgRecord`` objects, one at a time. Problems
of a single record (a truncated file, a lying header) raise ``SkipRecord`` with a short stable
reason and are counted in ``ReadSummary.skipped``; problems of the whole folder or table (no
records, a missing column) raise ``DataError`` with one line that says how to fix them.

``Reader.read`` is guarded for every subclass (``Reader.__init_subclass__`` wraps the subclass's
``read``), so no reader, present or future, can let one record's failure escape as anything but a
``SkipRecord``: an unexpected exception becomes the reason ``"reader error: <Type>"`` and a
returned record that breaks the ``EcgRecord`` contract (no id, not 12 x L, a sampling rate outside
``MIN_FS``..``MAX_FS``, shorter than ``MIN_SECONDS``, non-finite samples, a strat_fold, sex,
patient_id or age the pipeline cannot store) is skipped with a named reason. ``DataError`` (a table-level problem) and ``BaseException`` (Ctrl-C) pass through.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from etp_search.errors import DataError
from etp_search.records import STANDARD_LEADS, EcgRecord

logger = logging.getLogger(__name__)

#: Sampling rates (Hz) a record may have. Below 50 Hz no ECG waveform survives (a QRS lasts ~0.1 s),
#: above 10 kHz is no ECG archive; a header outside this range is damaged, and resampling it to the
#: model's rate would need absurd ratios (0.01 Hz -> 100 Hz made a 24 KB file allocate 4-9 GB).
MIN_FS = 50.0
MAX_FS = 10_000.0
#: Shortest record kept: under 1 s a 12-lead ECG holds no whole heartbeat (0 samples held nothing).
MIN_SECONDS = 1.0
#: Most samples (all channels) one record may hold, checked before a signal is allocated: 50 M is a
#: 2.3 h 12-lead record at 500 Hz (~1 GB while decoding); larger is a damaged header or not an ECG.
MAX_SAMPLES = 50_000_000

#: Text sources every reader understands; PTB-XL adds "scp_en" and readers with tables "column:<name>".
REPORT = "report"
SCP_EN = "scp_en"
COLUMN_PREFIX = "column:"

#: Record ids a summary names per skip reason (``skipped_examples``); the counts cover every skip.
SKIP_EXAMPLES = 20


class SkipRecord(Exception):
    """One record cannot be read; ``reason`` is a short stable key counted in the summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        # One line always: a detail may quote file bytes or an exception text with newlines.
        detail = " ".join(str(detail).split())
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across worker processes with both arguments
        return type(self), (self.reason, self.detail)


def note_skip(skipped: dict[str, int], examples: dict[str, list[str]], ref: str, reason: str) -> None:
    """Count one skipped record and name it: ``-v`` logs each, summaries name the first few per
    reason. A count alone left the user of a large download unable to find the broken files."""
    skipped[reason] = skipped.get(reason, 0) + 1
    ids = examples.setdefault(reason, [])
    if len(ids) < SKIP_EXAMPLES:
        ids.append(ref)
    logger.debug("skipped %s: %s", ref, reason)


def merge_skips(skipped: dict[str, int], examples: dict[str, list[str]], counts: dict[str, int],
                names: dict[str, list[str]]) -> None:
    """Add the counts and named ids of another part of a run (a batch, a resumed build, a rank)."""
    for reason, n in counts.items():
        skipped[reason] = skipped.get(reason, 0) + int(n)
    for reason, ids in names.items():
        examples[reason] = (examples.get(reason, []) + list(ids))[:SKIP_EXAMPLES]


def nothing_read(where: object, found: int, skipped: dict[str, int], examples: dict[str, list[str]]) -> DataError:
    """The one line of a run in which every record found was skipped: nothing was written, and the
    folder is most likely not the dataset meant (or not of the layout it was taken for)."""
    top = sorted(skipped.items(), key=lambda kv: -kv[1])[:3]
    reasons = "; ".join(f"{r}: {n}" + (f" (e.g. {examples[r][0]})" if examples.get(r) else "") for r, n in top)
    return DataError(f"none of the {found} records found in {where} could be read ({reasons}); nothing was "
                     "written: check that it is the dataset folder you meant (-v logs each skipped record)")


def check_sampling_rate(fs: object, where: str) -> float:
    """``fs`` as a float within ``MIN_FS``..``MAX_FS``; else SkipRecord "sampling rate out of range"."""
    try:
        value = float(fs)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not (MIN_FS <= value <= MAX_FS):  # also refuses NaN and inf
        raise SkipRecord("sampling rate out of range",
                         f"{where}: {fs!r} Hz, an ECG is recorded at {MIN_FS:g}-{MAX_FS:g} Hz")
    return value


def check_size(n_samples: int, where: str) -> None:
    """Refuse a record of more than ``MAX_SAMPLES`` samples before anything is allocated for it."""
    if n_samples > MAX_SAMPLES:
        raise SkipRecord("record too large", f"{where}: {n_samples} samples, at most {MAX_SAMPLES} are read")


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
    for row in np.flatnonzero(bad.all(axis=1)).tolist():
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


def check_record(rec: object, ref: str) -> EcgRecord:
    """Enforce the ``EcgRecord`` contract on what a reader returned; a breach is a SkipRecord.

    Non-finite samples are zeroed and counted (``check_finite``) for readers that did not do it.
    """
    if not isinstance(rec, EcgRecord):
        raise SkipRecord("reader error: not a record", f"{ref}: the reader returned {type(rec).__name__}")
    if not isinstance(rec.id, str) or not rec.id.strip():
        raise SkipRecord("empty record id", f"{ref}: record id {rec.id!r}")
    fs = check_sampling_rate(rec.fs, ref)
    signal = rec.signal
    if not isinstance(signal, np.ndarray) or signal.ndim != 2 or signal.shape[0] != len(rec.leads):
        shape = getattr(signal, "shape", type(signal).__name__)
        raise SkipRecord("bad signal shape", f"{ref}: signal {shape}, expected {len(rec.leads)} leads by N samples")
    if np.iscomplexobj(signal) or not np.issubdtype(signal.dtype, np.number):
        raise SkipRecord("bad signal type", f"{ref}: {signal.dtype} samples, expected real numbers")
    if signal.shape[1] == 0:
        raise SkipRecord("empty signal", f"{ref}: 0 samples")
    if signal.shape[1] < MIN_SECONDS * fs:
        raise SkipRecord("signal too short", f"{ref}: {signal.shape[1] / fs:.3g} s, at least {MIN_SECONDS:g} s "
                         "are needed for one heartbeat")
    _check_meta(rec.meta, ref)
    nan_samples = check_finite(signal, rec.leads)
    if nan_samples:
        rec.meta["nan_samples"] = int(rec.meta.get("nan_samples") or 0) + nan_samples
    return rec


# Values the pipeline stores for the common metadata (the signal cache's strat_fold is int16; -1 and
# nan mean unknown): anything else would end a whole `prepare` in an OverflowError, or be a silent lie.
_META_RANGES = {"strat_fold": (1, 32767), "sex": (0, 1), "patient_id": (0, 2 ** 53)}


def _check_meta(meta: Any, ref: str) -> None:
    if not isinstance(meta, dict):
        raise SkipRecord("reader error: meta", f"{ref}: meta is {type(meta).__name__}, not a dict")
    for key, (lo, hi) in _META_RANGES.items():
        value = meta.get(key, -1)
        if value is None or value == -1:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise SkipRecord(f"malformed {key}", f"{ref}: {key} {value!r} is not -1 (unknown) or an integer {lo}..{hi}")
    age = meta.get("age", math.nan)
    try:
        ok = age is None or math.isnan(float(age)) or 0.0 <= float(age) <= 300.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SkipRecord("malformed age", f"{ref}: age {age!r} is not nan (unknown) or 0..300")


#: Unexpected exception types already logged at WARNING in this process (then DEBUG, not a flood).
_WARNED: set[str] = set()


def _guarded(read: Callable[[Any, str], EcgRecord]) -> Callable[[Any, str], EcgRecord]:
    """Wrap a reader's ``read`` so one record's failure can only ever be a SkipRecord."""

    @functools.wraps(read)
    def guarded_read(self: Any, ref: str) -> EcgRecord:
        try:
            return check_record(read(self, ref), str(ref))
        except (SkipRecord, DataError):
            raise  # already a counted skip, or a table-level problem with its own one line
        except Exception as exc:  # noqa: BLE001 - any one-record failure (OverflowError, RecursionError, ...)
            kind = type(exc).__name__
            level = logging.DEBUG if kind in _WARNED else logging.WARNING
            _WARNED.add(kind)
            logger.log(level, "%s: record %s: %s: %s (skipped; further %s are logged at debug level)",
                       type(self).__name__, ref, kind, exc, kind)
            raise SkipRecord(f"reader error: {kind}", f"{ref}: {exc}") from None

    guarded_read.__etp_guarded__ = True  # type: ignore[attr-defined]
    return guarded_read


class Reader:
    """Base of all readers: ``refs()`` lists records cheaply, ``read(ref)`` loads one.

    Subclasses set ``format_name``, ``root``, ``fs`` and ``text_source`` and implement
    ``_list_refs`` and ``read``. Readers hold only paths and small tables so they pickle cheaply
    to worker processes; signals are read one record at a time.

    A subclass's ``read`` is wrapped when the class is created (``__init_subclass__``), so a new
    reader just raises ``SkipRecord`` where it knows the reason and gets the rest for free: any
    other exception of one record becomes a counted skip, and the returned record is checked
    (``check_record``). Raise ``DataError`` only for problems of the whole dataset.
    """

    format_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        read = cls.__dict__.get("read")
        if read is not None and not getattr(read, "__etp_guarded__", False):
            setattr(cls, "read", _guarded(read))  # replaces the subclass's own method at class creation

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


def require_ids(ids: Sequence[str], column: str, path: Path) -> None:
    """One DataError line for an empty or duplicated id: the key of every record is then in doubt."""
    ids = [str(i).strip() for i in ids]
    empty = [row for row, i in enumerate(ids) if not i]
    if empty:
        raise DataError(f"{path} has {len(empty)} row(s) without {column} (first: data row {empty[0] + 1}); "
                        "every record needs its id: re-download the file")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path} has duplicate {column} values; re-download it")


def inside_root(rel: str, what: str, root: Path) -> str:
    """A table's relative signal path, refused (SkipRecord) when empty, absolute or climbing out with '..'."""
    if not rel.strip() or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise SkipRecord("malformed filename", f"{what}: {rel[:60]!r} is not a path inside {root}")
    return rel


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
            if not 0.0 <= age <= 300.0:  # "inf", "-5": no age (NaN stays NaN)
                age = float("nan")
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

"""A folder of per-record NumPy arrays plus a metadata table, with its signal facts DECLARED.

Preprocessed archives often ship as ``signals/<id>.npy`` and a CSV. An array does not say its
sampling rate, its axis order, its lead order or its unit, and guessing any of them silently makes
a model see the wrong thing (a transposed array still has 12 x 1000 numbers). So the folder, or a
file passed in its place, carries a small JSON sidecar that states them::

    {
      "format": "npy-folder",
      "root": ".",                      # optional: the array folder, relative to this file
      "signals": "signals",             # optional: subfolder holding <id>.npy (default: root itself)
      "fs": 100,                        # required: samples per second
      "layout": "samples x leads",      # required: or "leads x samples"
      "leads": "standard",              # required: "standard" (I, II, III, aVR, aVL, aVF, V1-V6) or a list
      "unit": "sd",                     # required: "mV", "uV", "V", or "sd" (per-lead standardised, no physical unit)
      "seconds": 10,                    # optional: every array must last this long at fs
      "id": "int",                      # optional: "stem" (default: file name = id) or "int" (02014.npy -> "2014")
      "table": "../ptbxl/ptbxl_database.csv",   # optional metadata table, relative to this file
      "table_convention": "ptbxl",      # "ptbxl" (scp_codes, strat_fold, English scp_en reports) or "generic"
      "columns": {"id": "id", "text": "report", "labels": "labels", "strat_fold": "strat_fold",
                  "age": "age", "sex": "sex", "patient_id": "patient_id"},   # generic tables only
      "check_rate": true                # optional: verify fs from the beat spacing of a few arrays
    }

``FOLDER/etp-arrays.json`` makes a folder self-describing; any other ``*.json`` sidecar can be passed
where a dataset folder is expected (for a read-only folder). Declarations are checked against up
to 8 evenly spaced arrays when the folder is opened: a layout whose lead axis does not match the
declared leads, or a duration that contradicts ``seconds``, in most of them, or a rate whose beats
would be implausibly fast or slow, ends in one line naming the file and the field to fix. One odd
array among agreeing ones is its record's counted skip, not the folder's error. Per record, arrays
are loaded without pickle; a record whose array is unreadable or of another shape is a counted skip.

Records are the arrays present; table rows without an array are not counted as missing (the
table may describe a larger dataset, as ptbxl_database.csv does), arrays without a table row are
skipped as "no metadata row".
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from etp_search.errors import DataError
from etp_search.readers.base import (COLUMN_PREFIX, REPORT, SCP_EN, Reader, SkipRecord, arrange_leads, check_finite,
                                     native_text_source, sex_code)
from etp_search.records import STANDARD_LEADS, EcgRecord

if TYPE_CHECKING:  # imported where used: a PTB-XL table is optional
    from etp_search.readers.ptbxl import PtbxlReader

logger = logging.getLogger(__name__)

SIDECAR = "etp-arrays.json"
FORMAT_MARK = "npy-folder"
LAYOUTS = {"samples x leads": 0, "leads x samples": 1}  # value: the axis that holds samples
UNITS = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "sd": 1.0}
#: Declared rates outside this range are refused (a typo such as 0.1 or 1e9 would allocate GBs).
FS_RANGE = (50.0, 10_000.0)
#: Median beat rate (per minute) that a declared fs must give on the checked arrays.
BPM_RANGE = (24.0, 300.0)
_KEYS = {"format", "root", "signals", "fs", "layout", "leads", "unit", "seconds", "id", "table", "table_convention",
         "columns", "check_rate", "note"}
_GENERIC_COLUMNS = ("id", "text", "labels", "strat_fold", "age", "sex", "patient_id")
#: Column names a generic table is read with unless "columns" renames them.
_DEFAULT_COLUMNS = {"id": "id", "text": "report", "labels": "labels", "strat_fold": "strat_fold", "age": "age",
                    "sex": "sex", "patient_id": "patient_id"}
_EXAMPLE = ('{"format": "npy-folder", "fs": 100, "layout": "samples x leads", "leads": "standard", "unit": "mV"}')


def is_sidecar_file(path: Path) -> bool:
    """True for a JSON file whose "format" is "npy-folder" (cheap: small files only)."""
    if not path.is_file() or path.suffix.lower() != ".json" or path.stat().st_size > 1 << 20:
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT_MARK


def has_arrays(folder: Path) -> bool:
    """A folder with .npy files in it or in signals/ (used to say "declare its layout")."""
    for d in (folder, folder / "signals"):
        if d.is_dir() and any(n.endswith(".npy") for n in os.listdir(d)):
            return True
    return False


def _fail(where: Path, msg: str) -> DataError:
    return DataError(f"{where}: {msg}")


def _load_sidecar(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"is not a readable JSON sidecar ({type(exc).__name__}); write one like {_EXAMPLE}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_MARK:
        raise _fail(path, f'needs "format": "{FORMAT_MARK}"; write one like {_EXAMPLE}')
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    missing = [k for k in ("fs", "layout", "leads", "unit") if k not in doc]
    if missing:
        raise _fail(path, f"must declare {', '.join(missing)} (never guessed from the arrays); e.g. {_EXAMPLE}")
    return doc


def _declared_fs(doc: dict[str, Any], where: Path) -> float:
    fs = doc["fs"]
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs) \
            or not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise _fail(where, f'"fs" must be a sampling rate in Hz between {FS_RANGE[0]:g} and {FS_RANGE[1]:g}, got {fs!r}')
    return float(fs)


def _declared_leads(doc: dict[str, Any], where: Path) -> list[str]:
    leads = doc["leads"]
    if leads == "standard":
        return list(STANDARD_LEADS)
    if not isinstance(leads, list) or not leads or not all(isinstance(x, str) and x.strip() for x in leads):
        raise _fail(where, '"leads" must be "standard" or a list of lead names such as ["I", "II", "V1"]')
    return [x.strip() for x in leads]


def estimate_bpm(x: np.ndarray, fs: float) -> float:
    """Beat rate per minute of a (leads, samples) array, from the autocorrelation of its slope energy.

    Used only to check a declared rate: the strongest repeat after the zero-lag lobe is one beat
    period in samples, which the declared fs turns into beats per minute. NaN when no repeat is found.
    """
    x = np.nan_to_num(np.asarray(x, np.float64))
    e = np.abs(np.diff(x, axis=1)).sum(axis=0)
    e = e - e.mean()
    n = e.size
    if n < 16 or not np.any(e):
        return float("nan")
    spec = np.fft.rfft(e, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[: n // 2]
    below = np.flatnonzero(ac <= 0)
    if not below.size:
        return float("nan")
    start = int(below[0])
    if start >= ac.size - 1:
        return float("nan")
    lag = start + int(np.argmax(ac[start:]))
    return 60.0 * fs / lag if lag > 0 else float("nan")


class NpyFolderReader(Reader):
    """Reader for ``<id>.npy`` arrays with a declared rate, layout, lead order and unit.

    Args:
        root: The array folder (holding ``etp-arrays.json``) or a sidecar ``.json`` file.
        text_source: "scp_en" (PTB-XL tables; elsewhere read as "report"), "report" or "column:<name>".
    """

    format_name = "npy"
    fs: float  # always declared by the sidecar (the base allows None for readers that learn it per record)

    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        given = Path(root)
        sidecar = given if given.is_file() else given / SIDECAR
        if not sidecar.is_file():
            raise DataError(f"{given} holds NumPy arrays but no {SIDECAR} declaring their fs, layout, leads and unit; "
                            f"write {given / SIDECAR} like {_EXAMPLE} or pass a sidecar .json file instead of the folder")
        doc = _load_sidecar(sidecar)
        base = sidecar.parent
        super().__init__(base / str(doc.get("root", ".")), text_source)
        self.sidecar = sidecar
        self.fs = _declared_fs(doc, sidecar)
        layout = str(doc["layout"]).strip().lower().replace("×", "x")
        if layout not in LAYOUTS:
            raise _fail(sidecar, f'"layout" must be "samples x leads" or "leads x samples", got {doc["layout"]!r}')
        self.layout = layout
        self.leads = _declared_leads(doc, sidecar)
        unit = str(doc["unit"]).strip()
        if unit.lower() not in UNITS:
            raise _fail(sidecar, f'"unit" must be one of mV, uV, V, sd (per-lead standardised), got {unit!r}')
        self.unit = unit
        self.seconds = doc.get("seconds")
        if self.seconds is not None and (isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float))
                                         or not 0 < self.seconds < 1e6):
            raise _fail(sidecar, f'"seconds" must be a positive duration, got {self.seconds!r}')
        self.id_rule = str(doc.get("id", "stem"))
        if self.id_rule not in ("stem", "int"):
            raise _fail(sidecar, f'"id" must be "stem" or "int", got {self.id_rule!r}')
        self.signal_dir = self.root / str(doc.get("signals", "."))
        if not self.signal_dir.is_dir():
            raise _fail(sidecar, f"the signal folder {self.signal_dir} does not exist; fix \"root\" or \"signals\"")
        self.convention = str(doc.get("table_convention", "generic"))
        if self.convention not in ("ptbxl", "generic"):
            raise _fail(sidecar, f'"table_convention" must be "ptbxl" or "generic", got {self.convention!r}')
        if self.convention == "ptbxl":
            self.format_name = "npy-ptbxl"
        self._table: PtbxlReader | None = None
        self._rows: dict[str, dict[str, str]] | None = None
        self._files: dict[str, str] = {}
        table = doc.get("table")
        if table is not None:
            self._open_table(base / str(table), doc, text_source)
        elif self.convention == "ptbxl":
            raise _fail(sidecar, '"table_convention": "ptbxl" needs "table": the path of ptbxl_database.csv')
        else:
            self.text_source = native_text_source(text_source, self.format_name)
        if self.unit.lower() == "sd":
            logger.info("%s: amplitudes are per-lead standardised (unit sd); presets that z-score (etp-*) make "
                        "them comparable with mV records, raw-* presets do not", sidecar)
        self._check_declarations(bool(doc.get("check_rate", True)))

    # -- table ---------------------------------------------------------------------------------

    def _open_table(self, path: Path, doc: dict[str, Any], text_source: str) -> None:
        if not path.is_file():
            raise _fail(self.sidecar, f'the metadata table {path} does not exist; fix "table"')
        if self.convention == "ptbxl":
            from etp_search.readers.ptbxl import DATABASE_CSV, PtbxlReader

            if path.name != DATABASE_CSV:
                raise _fail(self.sidecar, f'"table_convention": "ptbxl" reads PTB-XL\'s {DATABASE_CSV}, not {path.name}')
            # The PTB-XL reader parses the table (scp_codes, English reports); its signal files are never read.
            self._table = PtbxlReader(path.parent, sampling_rate=100, text_source=text_source)
            self.text_source = text_source
            return
        import pandas as pd

        from etp_search.readers.base import require_columns

        columns = dict(_DEFAULT_COLUMNS)
        columns.update({k: str(v) for k, v in dict(doc.get("columns") or {}).items()})
        bad = sorted(set(columns) - set(_GENERIC_COLUMNS))
        if bad:
            raise _fail(self.sidecar, f'unknown "columns" key(s) {", ".join(bad)}; allowed: {", ".join(_GENERIC_COLUMNS)}')
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001 - an empty or binary file
            raise DataError(f"{path} cannot be read as CSV ({type(exc).__name__}); check \"table\" in {self.sidecar}") from None
        require_columns(frame.columns, [columns["id"]], path)
        if frame[columns["id"]].duplicated().any():
            raise DataError(f"{path} has duplicate values in its id column '{columns['id']}'; ids must be unique")
        self._columns = columns
        available = tuple(frame.columns)
        self.text_source = native_text_source(text_source, self.format_name, available)
        self._rows = {str(r[columns["id"]]): r for r in frame.to_dict("records")}

    def _row(self, rid: str) -> dict[str, str] | None:
        if self._table is not None:
            try:
                return self._table.row(rid)
            except SkipRecord:
                return None
        if self._rows is not None:
            return self._rows.get(rid)
        return {}

    # -- listing and checks --------------------------------------------------------------------

    def _id_of(self, stem: str) -> str:
        if self.id_rule == "int":
            try:
                return str(int(stem))
            except ValueError:
                return stem  # not a number: kept as is, and found by no integer table id
        return stem

    def _list_refs(self) -> tuple[list[str], int]:
        files = sorted(n for n in os.listdir(self.signal_dir) if n.endswith(".npy"))
        ids: dict[str, str] = {}
        for name in files:
            ids.setdefault(self._id_of(name[:-4]), name)
        if not ids:
            raise _fail(self.sidecar, f"no .npy arrays in {self.signal_dir}; fix \"root\" or \"signals\"")
        self._files = ids
        refs = sorted(ids, key=lambda s: (len(s), s))
        return refs, 0

    def _shape_problem(self, shape: tuple[int, ...], name: str) -> str | None:
        if len(shape) != 2:
            return f"{name} has shape {shape}, not 2-D (samples, leads) or (leads, samples)"
        n_leads = len(self.leads)
        lead_axis = 1 - LAYOUTS[self.layout]
        if shape[lead_axis] == n_leads:
            return None
        other = "leads x samples" if self.layout == "samples x leads" else "samples x leads"
        if shape[1 - lead_axis] == n_leads:
            return (f'"layout" says {self.layout} but {name} has shape {shape}: its other axis holds the '
                    f'{n_leads} declared leads; set "layout": "{other}"')
        return f"{name} has shape {shape}, which has no axis of the {n_leads} declared leads; fix \"leads\" or the arrays"

    def _check_declarations(self, check_rate: bool, n: int = 8) -> None:
        """Hold the declared layout, duration and rate against a few evenly spaced arrays."""
        refs = self.refs()
        picks = [refs[i] for i in np.unique(np.linspace(0, len(refs) - 1, min(n, len(refs))).round().astype(int))]
        bpm: list[float] = []
        checked, shape_bad, length_bad = 0, [], []
        for rid in picks:
            path = self.signal_dir / self._files[rid]
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                continue  # a damaged file is that record's skip, not the folder's error
            checked += 1
            problem = self._shape_problem(tuple(arr.shape), path.name)
            if problem:
                shape_bad.append(problem)
                continue
            samples = int(arr.shape[LAYOUTS[self.layout]])
            if self.seconds is not None and abs(samples / self.fs - float(self.seconds)) > 1.0 / self.fs + 1e-9:
                length_bad.append(f'"fs" {self.fs:g} Hz and "seconds" {self.seconds:g} disagree with '
                                  f"{path.name}: {samples} samples last {samples / self.fs:g} s at {self.fs:g} Hz "
                                  f"({samples / float(self.seconds):g} Hz would give {self.seconds:g} s); fix \"fs\"")
                continue
            if check_rate and np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr):
                x = np.asarray(arr, np.float64)
                bpm.append(estimate_bpm(x.T if LAYOUTS[self.layout] == 0 else x, self.fs))
        # A declaration is wrong when most arrays contradict it; one odd array among agreeing ones is
        # that record's counted skip (read() refuses it), not the whole folder's error.
        for bad in (shape_bad, length_bad):
            if bad and 2 * len(bad) > checked:
                more = f" ({len(bad)} of the {checked} arrays checked)" if checked > 1 else ""
                raise _fail(self.sidecar, bad[0] + more)
        if shape_bad or length_bad:
            logger.warning("%s: %d of %d arrays checked do not match the declarations (e.g. %s); they are skipped",
                           self.sidecar, len(shape_bad) + len(length_bad), checked, (shape_bad + length_bad)[0])
        good = [b for b in bpm if math.isfinite(b)]
        if check_rate and len(good) >= 3:
            med = float(np.median(good))
            if not BPM_RANGE[0] <= med <= BPM_RANGE[1]:
                raise _fail(self.sidecar, f'at the declared "fs" {self.fs:g} Hz the beats of {len(good)} arrays come at a '
                                          f"median {med:.0f} per minute, outside {BPM_RANGE[0]:g}-{BPM_RANGE[1]:g}: "
                                          f'"fs" is likely wrong (or set "check_rate": false for non-cardiac rhythms)')

    # -- records -------------------------------------------------------------------------------

    def read(self, ref: str) -> EcgRecord:
        if not self._files:
            self.refs()
        name = self._files.get(str(ref))
        if name is None:
            raise SkipRecord("unknown record", str(ref))
        row = self._row(str(ref))
        if row is None:
            raise SkipRecord("no metadata row", f"{name}: id {ref} is not in the table")
        path = self.signal_dir / name
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # truncated file, object array (would need pickle), not .npy
            raise SkipRecord("unreadable array", f"{name}: {type(exc).__name__}") from None
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise SkipRecord("array dtype", f"{name}: {arr.dtype} is not a real number type")
        problem = self._shape_problem(tuple(arr.shape), name)
        if problem:
            raise SkipRecord("array shape", problem)
        x = np.array(arr.T if LAYOUTS[self.layout] == 0 else arr, dtype=np.float32)
        if x.shape[1] == 0:
            raise SkipRecord("empty array", name)
        if self.seconds is not None and abs(x.shape[1] / self.fs - float(self.seconds)) > 1.0 / self.fs + 1e-9:
            raise SkipRecord("unexpected length", f"{name}: {x.shape[1]} samples, declared {self.seconds} s at {self.fs:g} Hz")
        x *= UNITS[self.unit.lower()]
        signal, missing, dropped = arrange_leads(x, self.leads)
        nan = check_finite(signal)
        meta, texts, labels = self._metadata(str(ref), row)
        meta.update(source=str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path),
                    missing_leads=missing, texts=texts, unit=self.unit)
        if nan:
            meta["nan_samples"] = nan
        if dropped:
            meta["dropped_channels"] = dropped
        return EcgRecord(id=str(ref), signal=signal, fs=self.fs, text=texts.get(self.text_source, ""),
                         labels=labels, meta=meta)

    def _metadata(self, rid: str, row: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
        if self._table is not None:
            from etp_search.text import parse_scp_codes

            try:
                labels = parse_scp_codes(row["scp_codes"])
            except (ValueError, SyntaxError):
                raise SkipRecord("malformed scp_codes", f"ecg_id {rid}") from None
            texts = self._table.texts_for(row, labels)
            meta = {"age": _as_float(row.get("age")), "sex": _as_int(row.get("sex")),
                    "strat_fold": _as_int(row.get("strat_fold")), "patient_id": _as_int(row.get("patient_id"))}
            return meta, texts, labels
        c = getattr(self, "_columns", _DEFAULT_COLUMNS)
        texts = {REPORT: str(row.get(c["text"], "") or "").strip()}
        if self.text_source.startswith(COLUMN_PREFIX):
            texts[self.text_source] = str(row.get(self.text_source[len(COLUMN_PREFIX):], "") or "").strip()
        meta = {"age": _as_float(row.get(c["age"])), "sex": sex_code(row.get(c["sex"], "")),
                "strat_fold": _as_int(row.get(c["strat_fold"])), "patient_id": _as_int(row.get(c["patient_id"]))}
        return meta, texts, _parse_labels(row.get(c["labels"], ""), rid)


def _as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _as_int(v: Any) -> int:
    """-1 (unknown) for empty, non-numeric or non-finite cells."""
    f = _as_float(v)
    return -1 if math.isnan(f) else int(f)


def _parse_labels(cell: Any, rid: str) -> dict[str, float]:
    """A labels cell: a JSON object (code -> weight) or a comma/semicolon separated list of names."""
    text = str(cell or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
            return {str(k): float(v) for k, v in value.items()}
        except (ValueError, TypeError, AttributeError):
            raise SkipRecord("malformed labels", f"id {rid}: {text[:40]!r}") from None
    return {p.strip(): 1.0 for p in text.replace(";", ",").split(",") if p.strip()}

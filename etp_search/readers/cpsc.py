"""CPSC2018 in both published layouts.

- "cpsc2018": the original release, one MATLAB file per record holding a struct ``ECG`` with
  fields ``sex``, ``age`` and ``data`` (12 x N, mV, 500 Hz, standard lead order), plus
  REFERENCE.csv (Recording, First_label, Second_label, Third_label; classes 1..9).
- "cinc": the PhysioNet/CinC Challenge 2020/2021 form: WFDB headers (.hea) with a MATLAB v4
  ``val`` matrix (.mat) and ``#Dx:`` SNOMED CT codes. Labels come from REFERENCE.csv when one
  sits in the folder or its parent (the CPSC2018 records), otherwise from ``#Dx`` (any CinC
  source: Georgia, Chapman-Shaoxing, ...), keyed by the challenge's abbreviations.

CPSC has no free-text report: the text is the English class names joined with ", ".

Records are 6-60 s long and are returned whole. Fitting them to the model's window is the
preprocessing's job (``etp_search.preprocess``): centre crop to 10 s when longer, zero-pad at the
end when shorter.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.io

from etp_search.errors import DataError
from etp_search.labels import CPSC2018_CLASSES, CPSC2018_DESCRIPTIONS
from etp_search.readers.base import REPORT, SCP_EN, Reader, SkipRecord, check_finite, native_text_source, \
    parse_age_sex, require_columns, sex_code
from etp_search.readers.snomed import diagnosis, parse_dx
from etp_search.readers.wfdb_io import check_mat_size, read_wfdb
from etp_search.records import STANDARD_LEADS, EcgRecord

logger = logging.getLogger(__name__)

REFERENCE_CSV = "REFERENCE.csv"
CPSC_FS = 500.0


def find_reference(root: Path) -> Path | None:
    """REFERENCE.csv in the dataset folder or its parent (CinC copies keep it one level up)."""
    for folder in (root, root.parent):
        if (folder / REFERENCE_CSV).exists():
            return folder / REFERENCE_CSV
    return None


def load_reference(path: Path) -> dict[str, list[str]]:
    """Recording -> CPSC class names (First/Second/Third_label, numbers 1..9)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path} cannot be read as CSV ({type(exc).__name__}); re-download it") from None
    require_columns(table.columns, ["Recording", "First_label"], path)
    label_cols = [c for c in ("First_label", "Second_label", "Third_label") if c in table.columns]
    out: dict[str, list[str]] = {}
    for _, row in table.iterrows():
        classes = []
        for col in label_cols:
            value = row[col].strip()
            if not value:
                continue
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            # 0 or -1 once indexed the class list from its end: label 0 silently became "STE"
            if not (1 <= number <= len(CPSC2018_CLASSES) and number.is_integer()):
                raise DataError(f"{path}: label '{value[:20]}' of {row['Recording'][:40]} is not a class number 1..9; "
                                "re-download REFERENCE.csv")
            classes.append(CPSC2018_CLASSES[int(number) - 1])
        out[row["Recording"].strip()] = list(dict.fromkeys(classes))
    return out


def cpsc_text(classes: list[str]) -> str:
    return ", ".join(CPSC2018_DESCRIPTIONS[c] for c in classes)


class _CpscBase(Reader):
    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        super().__init__(root, text_source)
        self.text_source = native_text_source(text_source, self.format_name)
        ref = find_reference(self.root)
        self.reference_path = ref
        self._reference = load_reference(ref) if ref is not None else {}
        self._paths: dict[str, str] = {}

    def _resolve(self, ref: str, ext: str) -> str:
        """Relative path of a record; a direct path works without listing the folder first."""
        rel = self._paths.get(ref)
        if rel is None and Path(f"{self.root / ref}{ext}").exists():
            rel = ref
        if rel is None and self._refs is None:
            self.refs()
            rel = self._paths.get(ref)
        if rel is None:
            raise SkipRecord("unknown record", ref)
        return rel

    def _meta(self, rel: str, age: float, sex: int, text: str, missing: list[str]) -> dict:
        return {"age": age, "sex": sex, "strat_fold": -1, "source": rel, "missing_leads": missing,
                "texts": {REPORT: text}}


class CincReader(_CpscBase):
    """PhysioNet/CinC 2020/2021 WFDB records (.hea + .mat with ``val``), searched recursively."""

    format_name = "cinc"

    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        super().__init__(root, text_source)
        # CPSC2018 is all 500 Hz; other CinC sources differ (257 Hz to 1 kHz), known per record.
        self.fs = CPSC_FS if self._reference else None

    def _list_refs(self) -> tuple[list[str], int]:
        found: dict[str, str] = {}
        missing = 0
        for dirpath, dirnames, files in os.walk(self.root):
            dirnames.sort()
            names = set(files)
            for f in sorted(files):
                if not f.endswith(".hea"):
                    continue
                stem = f[:-4]
                if stem + ".mat" not in names and stem + ".dat" not in names:
                    missing += 1
                    continue
                found[(Path(dirpath).relative_to(self.root) / stem).as_posix()] = stem
        # The CPSC id ("A0001") when record names are unique, as REFERENCE.csv uses them.
        stems = list(found.values())
        unique = len(set(stems)) == len(stems)
        self._paths = {(stem if unique else rel): rel for rel, stem in found.items()}
        if self._reference and unique:
            missing += sum(1 for rec in self._reference if rec not in self._paths)
        return sorted(self._paths), missing

    def read(self, ref: str) -> EcgRecord:
        rel = self._resolve(ref, ".hea")
        sig = read_wfdb(self.root / rel)
        age, sex = parse_age_sex(sig.comments)
        codes = parse_dx(sig.comments)
        stem = Path(rel).name
        if stem in self._reference:
            classes = self._reference[stem]
            labels = {c: 1.0 for c in classes}
            text, label_source = cpsc_text(classes), REFERENCE_CSV
        else:
            dx = [diagnosis(c) for c in codes]
            labels = {d.abbreviation: 1.0 for d in dx}
            text, label_source = ", ".join(dict.fromkeys(d.name for d in dx)), "#Dx"
        meta = self._meta(rel, age, sex, text, sig.missing_leads)
        meta.update({"dx_snomed": codes, "label_source": label_source})
        if sig.nan_samples:
            meta["nan_samples"] = sig.nan_samples
        if sig.dropped_channels:
            meta["dropped_channels"] = sig.dropped_channels
        return EcgRecord(id=ref, signal=sig.signal, fs=sig.fs, text=text, labels=labels, meta=meta)


def _field(struct: object, name: str):
    value = getattr(struct, name, None)
    if value is None and isinstance(struct, np.ndarray) and struct.dtype.names and name in struct.dtype.names:
        value = struct[name]
    return value


def _scalar(value: object) -> Any:
    """The first element of a MATLAB field (a numpy scalar of the file's dtype, even a string), or None."""
    arr = np.asarray(value)
    if arr.size == 0:
        return None
    return arr.reshape(-1)[0]


class Cpsc2018Reader(_CpscBase):
    """The original CPSC2018 release: ``A0001.mat`` structs (in the folder or one level down) + REFERENCE.csv."""

    format_name = "cpsc2018"

    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        super().__init__(root, text_source)
        self.fs = CPSC_FS
        if not self._reference:
            logger.info("%s: no %s beside the records; records get no labels and no text",
                           self.root, REFERENCE_CSV)

    def _list_refs(self) -> tuple[list[str], int]:
        paths: dict[str, str] = {}
        for folder in [self.root, *sorted(p for p in self.root.iterdir() if p.is_dir())]:
            for f in sorted(os.listdir(folder)):
                if f.endswith(".mat") and not (folder / (f[:-4] + ".hea")).exists():
                    paths.setdefault(f[:-4], (folder / f).relative_to(self.root).as_posix())
        self._paths = paths
        missing = sum(1 for rec in self._reference if rec not in paths)
        return sorted(paths), missing

    def read(self, ref: str) -> EcgRecord:
        rel = self._resolve(ref, ".mat")
        if not rel.endswith(".mat"):
            rel += ".mat"
        path = self.root / rel
        if not path.is_file():
            raise SkipRecord("missing signal file" if not path.exists() else "unreadable signal file", str(path))
        check_mat_size(path)
        try:
            mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
        except Exception as exc:  # not a MATLAB file, truncated, ...
            raise SkipRecord("unreadable signal file", f"{path}: {exc}") from None
        ecg = mat.get("ECG")
        data = None if ecg is None else _field(ecg, "data")
        if data is None:
            if "val" in mat:  # a CinC 2020/2021 .mat: its gains, rate and lead names live in the .hea
                raise SkipRecord("missing header", f"{path} is a CinC-style .mat (variable 'val') without its "
                                 f"header; put {path.with_suffix('.hea').name} beside it")
            raise SkipRecord("missing variable", f"{path} has no struct 'ECG' with field 'data'; pass a CPSC2018 "
                             ".mat or a WFDB record with its .hea")
        data = np.asarray(data)
        if np.iscomplexobj(data):  # a float cast would drop the imaginary part without a word
            raise SkipRecord("complex signal", f"{path}: ECG.data holds complex numbers; an ECG is real-valued")
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            raise SkipRecord("bad signal type", f"{path}: ECG.data holds {data.dtype} values, expected numbers; "
                             "pass an unmodified CPSC2018 .mat")
        data = data.astype(np.float32)
        if data.ndim != 2 or data.shape[0] != len(STANDARD_LEADS) or data.shape[1] == 0:
            raise SkipRecord("bad signal shape", f"{path}: ECG.data has shape {data.shape}, expected 12 leads "
                             "by N samples; pass an unmodified CPSC2018 .mat")
        signal = np.ascontiguousarray(data)
        nan_samples = check_finite(signal)
        age_value = _scalar(_field(ecg, "age"))
        try:
            age = float(age_value) if age_value is not None else math.nan
        except (TypeError, ValueError, OverflowError):
            age = math.nan
        if not 0.0 <= age <= 300.0:  # CPSC writes NaN for an unknown age; inf or -5 is no age either
            age = math.nan
        sex_value = _scalar(_field(ecg, "sex"))
        sex = sex_code(sex_value) if sex_value is not None else -1
        classes = self._reference.get(ref, [])
        text = cpsc_text(classes)
        meta = self._meta(rel, age, sex, text, [])
        meta["label_source"] = REFERENCE_CSV if ref in self._reference else ""
        if nan_samples:
            meta["nan_samples"] = nan_samples
        return EcgRecord(id=ref, signal=signal, fs=CPSC_FS, text=text, labels={c: 1.0 for c in classes},
                         meta=meta)

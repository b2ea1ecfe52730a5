"""Dataset readers: each published ECG layout -> a stream of ``EcgRecord``.

    reader = open_dataset("ptbxl/")            # layout detected from the folder
    for rec in reader: ...                     # skips bad records, counting them
    print(reader.summary.line())

Layouts (``detect_format`` names): "ptbxl", "mimic-iv-ecg", "cinc" (PhysioNet/CinC 2020/2021
.hea/.mat with #Dx SNOMED codes), "cpsc2018" (original MATLAB structs + REFERENCE.csv) and
"wfdb" (any folder of WFDB records, searched recursively) and "npy" (a folder of per-record NumPy
arrays whose rate, layout, lead order and unit are declared in a sidecar, ``readers.npy_folder``).

Several folders read as one (``open_dataset([a, b])`` or a list file, ``readers.multi``): each
record id is kept once, from the first folder that has it.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
from pathlib import Path
from typing import Sequence

from etp_search.errors import DataError
from etp_search.readers.base import ReadSummary, Reader, SkipRecord, standard_lead

logger = logging.getLogger(__name__)

__all__ = ["open_dataset", "dataset_paths", "detect_format", "list_formats", "Reader", "ReadSummary", "SkipRecord",
           "standard_lead"]

# format name -> "module:Class", imported on use so one layout's code never slows another.
_READERS = {
    "ptbxl": "etp_search.readers.ptbxl:PtbxlReader",
    "mimic-iv-ecg": "etp_search.readers.mimic:MimicReader",
    "cinc": "etp_search.readers.cpsc:CincReader",
    "cpsc2018": "etp_search.readers.cpsc:Cpsc2018Reader",
    "wfdb": "etp_search.readers.wfdb_folder:WfdbFolderReader",
    "npy": "etp_search.readers.npy_folder:NpyFolderReader",
}
_LOOKED_FOR = ("PTB-XL (ptbxl_database.csv), MIMIC-IV-ECG (record_list.csv), CinC 2020/2021 (.hea + .mat), "
               "CPSC2018 (.mat structs + REFERENCE.csv), WFDB (.hea + .dat), NumPy arrays (etp-arrays.json)")


def list_formats() -> list[str]:
    """Layout names accepted by ``open_dataset(fmt=...)``."""
    return list(_READERS)


def _unreadable(exc: OSError) -> None:
    # A folder we may not list is named, not silently left out of the detection (os.walk's onerror).
    logger.warning("skipped unreadable folder %s (%s)", exc.filename, exc.strerror or exc)


def _first_header(root: Path) -> Path | None:
    for dirpath, dirnames, files in os.walk(root, onerror=_unreadable):
        dirnames.sort()
        for f in sorted(files):
            if f.endswith(".hea") and _is_regular(Path(dirpath) / f):
                return Path(dirpath) / f
    return None


def _is_regular(path: Path) -> bool:
    """A regular file: a FIFO or device named like a record would block detection forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _has_bare_mat(root: Path) -> bool:
    """A .mat with no .hea beside it, in root or one level down (the original CPSC2018 release)."""
    try:
        subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as exc:
        _unreadable(exc)
        return False
    for folder in [root, *subfolders]:
        try:
            names = set(os.listdir(folder))
        except OSError as exc:
            _unreadable(exc)
            continue
        if any(n.endswith(".mat") and n[:-4] + ".hea" not in names for n in names):
            return True
    return False


def _is_cinc_header(path: Path) -> bool:
    from etp_search.readers.wfdb_io import MAX_HEADER_BYTES

    if not _is_regular(path):
        return False
    try:
        with open(path, "rb") as fh:  # bounded: a header is a few lines; a huge .hea is not read whole
            text = fh.read(MAX_HEADER_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    lines = text.splitlines()
    signal_lines = lines[1:3]
    return any(".mat" in ln.split(" ")[0] for ln in signal_lines if ln and not ln.startswith("#")) or \
        any(ln.lstrip("# ").lower().startswith("dx:") for ln in lines if ln.startswith("#"))


def detect_format(path: str | Path) -> str:
    """Name the layout of a dataset folder.

    Raises:
        DataError: the path is missing, not a folder, or holds no known layout.
    """
    from etp_search.readers.npy_folder import SIDECAR, has_arrays, is_sidecar_file

    root = Path(path)
    if not root.exists():
        raise DataError(f"{root} does not exist; pass the dataset folder")
    if root.is_file() and is_sidecar_file(root):
        return "npy"
    if not root.is_dir():
        raise DataError(f"{root} is a file; pass the folder that holds the dataset")
    if (root / SIDECAR).is_file():
        return "npy"
    if (root / "ptbxl_database.csv").exists():
        return "ptbxl"
    if (root / "record_list.csv").exists():
        return "mimic-iv-ecg"
    header = _first_header(root)
    if header is not None and _is_cinc_header(header):
        return "cinc"
    if _has_bare_mat(root):
        return "cpsc2018"
    if header is not None:
        return "wfdb"
    if has_arrays(root):
        return "npy"  # the reader then asks for the sidecar that declares the arrays' layout
    raise DataError(f"no ECG dataset found in {root}; looked for {_LOOKED_FOR}")


def dataset_paths(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The dataset paths an argument stands for: one folder, several, or the entries of a list file."""
    from etp_search.readers.multi import is_list_file, read_list_file

    items = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        p = Path(item)
        for d in read_list_file(p) if is_list_file(p) else [p]:
            key = d.resolve()
            if key in seen:  # read twice, its records would be counted twice ("listed without files" too)
                logger.warning("%s is given twice; it is read once", d)
                continue
            seen.add(key)
            out.append(d)
    return out


def open_dataset(path: str | Path | Sequence[str | Path], *, fmt: str | None = None,
                 sampling_rate: int | None = None, text_source: str = "scp_en") -> Reader:
    """Open a dataset folder (or several, or a list file of them) as a streaming reader.

    Args:
        path: Dataset folder, a NumPy sidecar .json, a list file (one path per line), or a sequence
            of these; more than one dataset gives a ``MultiReader`` where each record id is kept once.
        fmt: Layout name (see ``list_formats``); detected when None.
        sampling_rate: PTB-XL only: 100 (default) or 500.
        text_source: "scp_en" (default), "report" or "column:<name>". Layouts without SCP codes
            have no "scp_en" text; they use their own English report ("report") instead.

    Raises:
        DataError: unknown layout or format name, a broken table, or an explicit ``fmt`` that finds
            none of its records (the message names the detected layout).
    """
    paths = dataset_paths(path)
    if len(paths) != 1:
        from etp_search.readers.multi import MultiReader

        if not paths:
            raise DataError("no dataset given; pass one or more dataset folders")
        readers = [open_dataset(p, fmt=fmt, sampling_rate=sampling_rate, text_source=text_source) for p in paths]
        return MultiReader(readers, text_source)
    path = paths[0]
    name = detect_format(path) if fmt is None else fmt
    if name not in _READERS:
        raise DataError(f"unknown dataset format '{fmt}'; known formats: {', '.join(_READERS)}")
    if not Path(path).is_dir() and not (name == "npy" and Path(path).is_file()):
        raise DataError(f"{path} is not a folder; pass the dataset folder")
    # An explicit --format must fit the folder ("wfdb" reads any WFDB-based layout on purpose).
    checked = fmt is not None and name != "wfdb"
    detected = _detected_or_none(Path(path)) if checked else name
    if checked and detected != name and (name in _TABLE_LAYOUTS or detected in _TABLE_LAYOUTS):
        _wrong_format(Path(path), name, detected)  # a table layout read by another reader has no labels
    module, cls = _READERS[name].split(":")
    reader_cls = getattr(importlib.import_module(module), cls)
    if name == "ptbxl":
        reader = reader_cls(path, sampling_rate=sampling_rate, text_source=text_source)
    else:
        if sampling_rate is not None:
            # Only PTB-XL ships two rates; elsewhere the preprocessing preset resamples.
            logger.info("sampling_rate=%s ignored: %s records keep their native rate", sampling_rate, name)
        reader = reader_cls(path, text_source=text_source)
    if checked and detected != name and not reader.refs():
        _wrong_format(Path(path), name, detected)
    return reader


# Layouts whose records are defined by a table; another layout's reader would read them without labels.
_TABLE_LAYOUTS = ("ptbxl", "mimic-iv-ecg")


def _detected_or_none(root: Path) -> str | None:
    try:
        return detect_format(root)
    except DataError:
        return None


def _wrong_format(root: Path, name: str, detected: str | None) -> None:
    """Refuse a --format that finds none of its records, rather than "succeeding" with 0 labels."""
    if detected is None:
        raise DataError(f"{root} holds no {name} records and no other known layout; check the folder "
                        f"(looked for {_LOOKED_FOR})")
    raise DataError(f"{root} holds no {name} records; it is a {detected} folder: pass --format {detected} "
                    "or leave --format out")

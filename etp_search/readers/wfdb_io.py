"""Defensive WFDB reading: header and file size are checked before a signal is trusted.

``wfdb.rdrecord`` raises a bare ``ValueError`` on a truncated file and silently reads fewer
samples when a header under-states the length. Both would become either a traceback or a wrong
signal, so the file sizes are compared with the header first and every failure becomes a
``SkipRecord`` with a stable reason.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import wfdb

from etp_search.readers.base import SkipRecord, arrange_leads, check_finite, to_millivolts
from etp_search.records import STANDARD_LEADS

logger = logging.getLogger(__name__)

# Bytes per sample of the WFDB storage formats whose size is predictable (FLAC ones are not).
_BYTES_PER_SAMPLE = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
                     "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# Digital value WFDB uses for "no sample" in 16-bit formats.
_INVALID_16 = -32768
# Record line fields 2-4 (WFDB header spec): n_sig[/...]? fs[/counter_freq[(base)]] sig_len.
# wfdb's own parser accepts a line like "rec 12 abc" and falls back to 250 Hz, so check first.
_NUMBER = r"\d+(\.\d*)?([eE][-+]?\d+)?"
_FS = re.compile(rf"^{_NUMBER}(/{_NUMBER}(\({_NUMBER}\))?)?$")


def _check_record_line(path: Path) -> None:
    try:
        with open(path, "r", errors="replace") as f:
            line = next((ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")), "")
    except OSError as exc:
        raise SkipRecord("malformed header", f"{path}: {exc}") from None
    fields = line.split()
    ok = len(fields) >= 2 and fields[1].isdigit()
    if ok and len(fields) >= 3:
        ok = bool(_FS.match(fields[2]))
    if ok and len(fields) >= 4:
        ok = fields[3].isdigit()
    if not ok:
        raise SkipRecord("malformed header", f"{path}: first line {line.strip()[:60]!r} is no WFDB record line")


@dataclass
class WfdbSignal:
    """A WFDB record mapped to the standard 12 leads.

    Attributes:
        signal: (12, L) float32 mV in STANDARD_LEADS order, missing leads zero.
        fs: Sampling rate in Hz.
        comments: Header comment lines without the leading '#'.
        missing_leads: Standard leads absent from the file.
        dropped_channels: Channels that are no standard lead.
        nan_samples: Invalid samples set to 0.
    """

    signal: np.ndarray
    fs: float
    comments: list[str] = field(default_factory=list)
    missing_leads: list[str] = field(default_factory=list)
    dropped_channels: list[str] = field(default_factory=list)
    nan_samples: int = 0


def read_header(record: Path) -> wfdb.Record:
    """Parse ``record.hea``; a missing or malformed header becomes a SkipRecord."""
    hea = Path(f"{record}.hea")
    if not hea.exists():
        raise SkipRecord("missing header", str(record))
    _check_record_line(hea)
    try:
        header = wfdb.rdheader(str(record))
    except Exception as exc:  # wfdb raises HeaderSyntaxError, IndexError, ValueError, ... here
        raise SkipRecord("malformed header", f"{record}.hea: {exc}") from None
    if isinstance(header, wfdb.MultiRecord):
        raise SkipRecord("multi-segment record", str(record))
    if not header.n_sig or not header.sig_name:
        raise SkipRecord("malformed header", f"{record}.hea declares no signals")
    if not header.fs or header.fs <= 0:
        raise SkipRecord("malformed header", f"{record}.hea has no sampling frequency")
    return header


def _check_sizes(record: Path, header: wfdb.Record) -> None:
    """Compare each .dat file's size with what the header promises."""
    if header.sig_len is None:
        return  # wfdb infers the length from the file: nothing to contradict
    spf = header.samps_per_frame or [1] * header.n_sig
    offsets = header.byte_offset or [None] * header.n_sig
    by_file: dict[str, list[int]] = {}
    for ch, fname in enumerate(header.file_name):
        by_file.setdefault(fname, []).append(ch)
    for fname, chans in by_file.items():
        path = record.parent / fname
        if not path.exists():
            raise SkipRecord("missing signal file", str(path))
        fmts = {header.fmt[ch] for ch in chans}
        if len(fmts) != 1 or next(iter(fmts)) not in _BYTES_PER_SAMPLE:
            continue
        bps = _BYTES_PER_SAMPLE[next(iter(fmts))]
        per_frame = sum(spf[ch] or 1 for ch in chans)
        frame_bytes = bps * per_frame
        offset = offsets[chans[0]] or 0
        expected = offset + math.ceil(header.sig_len * frame_bytes)
        size = os.path.getsize(path)
        if size < expected:
            whole_frames = (size - offset) > 0 and ((size - offset) / frame_bytes).is_integer()
            reason = "header length mismatch" if whole_frames else "truncated signal"
            raise SkipRecord(reason, f"{path} has {size} bytes, header promises {expected}")
        if size - expected >= frame_bytes:
            raise SkipRecord("header length mismatch",
                             f"{path} has {size} bytes, header promises only {expected}")


def _read_cinc_mat(record: Path, header: wfdb.Record) -> np.ndarray:
    """Read the PhysioNet/CinC ``.mat`` (variable ``val``, digital units) as (n_sig, L) physical values."""
    path = record.parent / header.file_name[0]
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for non-MATLAB bytes
        raise SkipRecord("unreadable signal file", f"{path}: {exc}") from None
    if "val" not in mat:
        raise SkipRecord("missing variable", f"{path} has no variable 'val'")
    val = np.asarray(mat["val"])
    if val.ndim != 2 or val.shape[0] != header.n_sig:
        raise SkipRecord("header length mismatch", f"{path}: 'val' is {val.shape}, header says {header.n_sig} signals")
    if header.sig_len is not None and val.shape[1] != header.sig_len:
        raise SkipRecord("header length mismatch",
                         f"{path}: 'val' has {val.shape[1]} samples, header says {header.sig_len}")
    digital = val.astype(np.float64)
    if np.issubdtype(val.dtype, np.integer):
        digital[val == _INVALID_16] = np.nan
    gain = np.array([g if g else 200.0 for g in header.adc_gain], dtype=np.float64)[:, None]
    baseline = np.array(header.baseline or [0] * header.n_sig, dtype=np.float64)[:, None]
    return ((digital - baseline) / gain).astype(np.float32)


def read_wfdb(record: str | Path) -> WfdbSignal:
    """Read one WFDB record (path without extension) into the standard 12-lead layout.

    Raises:
        SkipRecord: "missing header", "malformed header", "missing signal file", "truncated signal",
            "header length mismatch", "missing variable", "unreadable signal file", "unknown lead",
            "all-NaN lead".
    """
    record = Path(record)
    header = read_header(record)
    if all(str(f).lower().endswith(".mat") for f in header.file_name):
        if not (record.parent / header.file_name[0]).exists():
            raise SkipRecord("missing signal file", str(record.parent / header.file_name[0]))
        raw = _read_cinc_mat(record, header)
    else:
        _check_sizes(record, header)
        try:
            rec = wfdb.rdrecord(str(record), physical=True)
        except Exception as exc:  # anything wfdb cannot decode is a per-record problem
            raise SkipRecord("unreadable signal file", f"{record}: {exc}") from None
        raw = np.asarray(rec.p_signal, dtype=np.float32).T.copy()
    unknown_units = to_millivolts(raw, header.units or [None] * header.n_sig)
    if unknown_units:
        logger.debug("%s: unknown units %s left unscaled", record, unknown_units)
    signal, missing, dropped = arrange_leads(raw, header.sig_name)
    nan_samples = check_finite(signal, STANDARD_LEADS)
    comments = [c.strip() for c in (header.comments or [])]
    return WfdbSignal(signal=signal, fs=float(header.fs), comments=comments, missing_leads=missing,
                      dropped_channels=dropped, nan_samples=nan_samples)

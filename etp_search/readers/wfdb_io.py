"""Defensive, fast WFDB reading: the header and file sizes are checked before a signal is trusted.

Why not just ``wfdb.rdrecord``:

- it raises a bare ``ValueError`` on a truncated file and silently reads fewer samples when a
  header under-states the length; it accepts a record line like ``rec 12 abc`` and falls back
  to 250 Hz. Each would become a traceback or a wrong signal, so here every problem becomes a
  ``SkipRecord`` with a stable reason;
- its header parser indexes pandas objects per field and costs ~12 ms per header, which made
  header parsing 90 % of reading time (56 records/s on PTB-XL). The header is parsed here in a
  few lines of Python and the common sample formats (16, 61, 80, 160, 24, 32, one sample per
  frame, no skew) are read with numpy; anything else still goes through ``wfdb.rdrecord``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import wfdb

from etp_search.readers.base import SkipRecord, arrange_leads, check_finite, check_sampling_rate, check_size, \
    to_millivolts
from etp_search.records import STANDARD_LEADS

logger = logging.getLogger(__name__)

# Bytes per sample of the WFDB storage formats whose size is predictable (FLAC ones are not).
_BYTES_PER_SAMPLE = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
                     "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# Formats read directly with numpy: dtype, offset subtracted, WFDB's "no sample" value.
_NUMPY_FORMATS = {"16": ("<i2", 0, -32768), "61": (">i2", 0, -32768), "80": ("u1", 128, -128),
                  "160": ("<u2", 32768, -32768), "32": ("<i4", 0, -(2 ** 31))}
_INVALID_16 = -32768
_DEFAULT_FS = 250.0  # WFDB header spec default when the record line gives no frequency
_DEFAULT_GAIN = 200.0  # WFDB default ADC gain when a header gives 0 or none

#: Largest header we read: real ones are a few KB even with long comments; a bigger .hea is not one.
MAX_HEADER_BYTES = 1 << 20
#: Largest |baseline| / |ADC zero|: WFDB samples are at most 32-bit, so a larger one is damage.
_MAX_ADC = 2 ** 31

# ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
_INT = re.compile(r"^[0-9]+$")
_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_FS = re.compile(rf"^({_NUMBER})(?:/{_NUMBER}(?:\({_NUMBER}\))?)?$")
_FORMAT = re.compile(r"^([0-9]+)(?:x([0-9]+))?(?::([0-9]+))?(?:\+([0-9]+))?$")
_GAIN = re.compile(rf"^({_NUMBER})(?:\(({_NUMBER})\))?(?:/(\S*))?$")


@dataclass
class Header:
    """A parsed single-segment WFDB header."""

    n_sig: int
    fs: float
    sig_len: int | None
    file_name: list[str]
    fmt: list[str]
    samps_per_frame: list[int]
    skew: list[int]
    byte_offset: list[int]
    adc_gain: list[float]
    baseline: list[int]
    units: list[str]
    sig_name: list[str]
    comments: list[str]


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


def _malformed(path: Path, why: str) -> SkipRecord:
    return SkipRecord("malformed header", f"{path}: {why}")


def _adc_int(text: str, line: str, path: Path) -> int:
    """A baseline or ADC zero: an integer (WFDB writes "0" or "-12.0"), at most 32-bit in size."""
    try:
        value = float(text)
        ok = math.isfinite(value) and abs(value) <= _MAX_ADC
    except ValueError:
        ok = False
    if not ok:
        raise _malformed(path, f"signal line {line[:60]!r} has no valid baseline or ADC zero ({text[:20]!r})")
    return int(value)


def parse_header(text: str, path: Path) -> Header:
    """Parse WFDB header text strictly (record line, one line per signal, '#' comments).

    Raises:
        SkipRecord: "malformed header" or "multi-segment record".
    """
    comments, lines = [], []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
        elif stripped:
            lines.append(stripped)
    if not lines:
        raise _malformed(path, "empty header")
    rec = lines[0].split()
    if "/" in rec[0]:
        raise SkipRecord("multi-segment record", str(path))
    if len(rec) < 2 or not _INT.match(rec[1]) or int(rec[1]) == 0:
        raise _malformed(path, f"record line {lines[0][:60]!r} gives no signal count")
    n_sig = int(rec[1])
    fs = _DEFAULT_FS
    if len(rec) >= 3:
        m = _FS.match(rec[2])
        if not m or float(m.group(1)) <= 0:
            raise _malformed(path, f"record line {lines[0][:60]!r} has no valid sampling frequency")
        fs = float(m.group(1))
    fs = check_sampling_rate(fs, str(path))  # 1e9, 1e400 or 0.01 Hz: refused before any resampling
    sig_len = None
    if len(rec) >= 4:
        if not _INT.match(rec[3]):
            raise _malformed(path, f"record line {lines[0][:60]!r} has no valid length")
        sig_len = int(rec[3])
    if len(lines) - 1 < n_sig:
        raise _malformed(path, f"declares {n_sig} signals but describes {len(lines) - 1}")

    h = Header(n_sig, fs, sig_len, [], [], [], [], [], [], [], [], [], comments)
    for line in lines[1:1 + n_sig]:
        parts = line.split()
        fm = _FORMAT.match(parts[1]) if len(parts) >= 2 else None
        if fm is None:
            raise _malformed(path, f"signal line {line[:60]!r} has no valid format")
        gain, baseline, units = 0.0, None, "mV"
        if len(parts) >= 3:
            gm = _GAIN.match(parts[2])
            if gm is None:
                raise _malformed(path, f"signal line {line[:60]!r} has no valid gain")
            gain = float(gm.group(1))
            baseline = _adc_int(gm.group(2), line, path) if gm.group(2) is not None else None
            units = gm.group(3) or "mV"
            if not math.isfinite(gain):  # "1e400" parses as inf and would flatten the lead silently
                raise _malformed(path, f"signal line {line[:60]!r} has no valid gain")
        adc_zero = _adc_int(parts[4], line, path) if len(parts) >= 5 else 0
        if fm.group(2) is not None and int(fm.group(2)) == 0:
            raise _malformed(path, f"signal line {line[:60]!r} has 0 samples per frame")
        h.file_name.append(parts[0])
        h.fmt.append(fm.group(1))
        h.samps_per_frame.append(int(fm.group(2) or 1))
        h.skew.append(int(fm.group(3) or 0))
        h.byte_offset.append(int(fm.group(4) or 0))
        h.adc_gain.append(gain if gain else _DEFAULT_GAIN)
        h.baseline.append(adc_zero if baseline is None else baseline)
        h.units.append(units)
        h.sig_name.append(" ".join(parts[8:]))
    if sig_len is not None:  # wfdb allocates (length + largest skew) frames before reading a byte
        check_size(n_sig * (sig_len + max(h.skew)), str(path))
    elif max(h.skew) > 0:
        check_size(n_sig * max(h.skew), str(path))
    return h


def read_header(record: Path) -> Header:
    """Read and parse ``record.hea``; a missing or malformed header becomes a SkipRecord."""
    hea = Path(f"{record}.hea")
    try:
        st = os.stat(hea)
    except FileNotFoundError:
        raise SkipRecord("missing header", str(record)) from None
    except OSError as exc:
        raise _malformed(hea, str(exc)) from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise _malformed(hea, "not a regular file")
    try:
        with open(hea, "rb") as fh:
            data = fh.read(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise _malformed(hea, str(exc)) from None
    if len(data) > MAX_HEADER_BYTES:
        raise _malformed(hea, f"larger than {MAX_HEADER_BYTES} bytes; a WFDB header is a few lines of text")
    return parse_header(data.decode("utf-8", errors="replace"), hea)


def signal_file(record: Path, fname: str) -> tuple[Path, int]:
    """(path, size in bytes) of a signal file a header names: a regular file inside the record's folder."""
    if fname.startswith(("/", "\\")) or ".." in fname.replace("\\", "/").split("/"):
        raise SkipRecord("unreadable signal file", f"{record}.hea names {fname!r}, outside the record's folder")
    path = record.parent / fname
    try:
        st = os.stat(path)  # one call for existence, kind and size: it runs for every record
    except FileNotFoundError:
        raise SkipRecord("missing signal file", str(path)) from None
    except OSError as exc:
        raise SkipRecord("unreadable signal file", f"{path}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SkipRecord("unreadable signal file", f"{path} is not a regular file")
    return path, st.st_size


def _channels_by_file(header: Header) -> dict[str, list[int]]:
    by_file: dict[str, list[int]] = {}
    for ch, fname in enumerate(header.file_name):
        by_file.setdefault(fname, []).append(ch)
    return by_file


def _check_sizes(record: Path, header: Header) -> dict[str, tuple[Path, int]]:
    """Compare each signal file's size with what the header promises; returns file name -> (path, size)."""
    files = {}
    for fname, chans in _channels_by_file(header).items():
        path, size = files[fname] = signal_file(record, fname)
        fmts = {header.fmt[ch] for ch in chans}
        if len(fmts) > 1:  # WFDB stores one format per file; decoding a mix gives garbage, not an error
            raise _malformed(Path(f"{record}.hea"), f"{fname} is given the formats {sorted(fmts)}; one file has one format")
        if header.sig_len is None or len(fmts) != 1 or next(iter(fmts)) not in _BYTES_PER_SAMPLE:
            continue  # no length to contradict, or a compressed format
        frame_bytes = _BYTES_PER_SAMPLE[next(iter(fmts))] * sum(header.samps_per_frame[ch] for ch in chans)
        offset = header.byte_offset[chans[0]]
        expected = offset + int(np.ceil(header.sig_len * frame_bytes))
        if size < expected:
            whole_frames = size > offset and ((size - offset) / frame_bytes).is_integer()
            reason = "header length mismatch" if whole_frames else "truncated signal"
            raise SkipRecord(reason, f"{path} has {size} bytes, header promises {expected}")
        if size - expected >= frame_bytes:
            raise SkipRecord("header length mismatch", f"{path} has {size} bytes, header promises only {expected}")
    return files


def _fast_path(header: Header) -> bool:
    return all(f in _NUMPY_FORMATS for f in header.fmt) and all(s == 1 for s in header.samps_per_frame) \
        and not any(header.skew)


def _read_numpy(header: Header, files: dict[str, tuple[Path, int]]) -> np.ndarray:
    """Digital samples of the simple formats -> (n_sig, L) physical values, NaN for "no sample"."""
    out = np.empty((header.n_sig, header.sig_len or 0), dtype=np.float32)
    for fname, chans in _channels_by_file(header).items():
        fmt = header.fmt[chans[0]]
        if any(header.fmt[ch] != fmt for ch in chans):
            raise SkipRecord("unreadable signal file", f"{fname} mixes sample formats")
        dtype, shift, invalid = _NUMPY_FORMATS[fmt]
        path, size = files[fname]
        offset = header.byte_offset[chans[0]]
        n = header.sig_len if header.sig_len is not None else \
            max(0, (size - offset) // (np.dtype(dtype).itemsize * len(chans)))
        check_size(n * header.n_sig, str(path))
        data = np.fromfile(path, dtype=dtype, count=n * len(chans), offset=offset)
        if data.size != n * len(chans):
            raise SkipRecord("truncated signal", f"{path}")
        digital = data.reshape(n, len(chans)).T.astype(np.int64) - shift
        if out.shape[1] != n:
            out = np.resize(out, (header.n_sig, n))
        for row, ch in enumerate(chans):
            values = (digital[row] - header.baseline[ch]) / header.adc_gain[ch]
            values[digital[row] == invalid] = np.nan
            with np.errstate(over="ignore"):  # beyond float32 becomes inf: zeroed and counted by check_finite
                out[ch] = values
    return out


def _read_cinc_mat(record: Path, header: Header) -> np.ndarray:
    """Read the PhysioNet/CinC ``.mat`` (variable ``val``, digital units) as (n_sig, L) physical values."""
    path, _ = signal_file(record, header.file_name[0])
    check_mat_size(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for non-MATLAB bytes
        raise SkipRecord("unreadable signal file", f"{path}: {exc}") from None
    if "val" not in mat:
        raise SkipRecord("missing variable", f"{path} has no variable 'val' (the CinC layout); "
                         "re-download the record or pass its original .mat")
    val = np.asarray(mat["val"])
    if np.iscomplexobj(val):  # casting to float would drop the imaginary part without a word
        raise SkipRecord("complex signal", f"{path}: 'val' holds complex numbers; an ECG is real-valued")
    if not (np.issubdtype(val.dtype, np.integer) or np.issubdtype(val.dtype, np.floating)):
        raise SkipRecord("bad signal type", f"{path}: 'val' holds {val.dtype}, expected numbers")
    if val.ndim != 2 or val.shape[0] != header.n_sig:
        raise SkipRecord("header length mismatch", f"{path}: 'val' is {val.shape}, header says {header.n_sig} signals")
    if header.sig_len is not None and val.shape[1] != header.sig_len:
        raise SkipRecord("header length mismatch",
                         f"{path}: 'val' has {val.shape[1]} samples, header says {header.sig_len}")
    digital = val.astype(np.float64)
    if np.issubdtype(val.dtype, np.integer):
        digital[val == _INVALID_16] = np.nan
    gain = np.asarray(header.adc_gain, dtype=np.float64)[:, None]
    baseline = np.asarray(header.baseline, dtype=np.float64)[:, None]
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: zeroed and counted by check_finite
        return ((digital - baseline) / gain).astype(np.float32)


def check_mat_size(path: Path) -> None:
    """Refuse a .mat whose variables (read from its headers, nothing loaded) exceed MAX_SAMPLES elements.

    A MATLAB v5 file may be zlib-compressed: a few KB can declare a matrix of many GB.
    """
    try:
        variables = scipy.io.whosmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for non-MATLAB bytes
        raise SkipRecord("unreadable signal file", f"{path}: {exc}") from None
    total = sum(int(np.prod(shape, dtype=np.float64)) for _, shape, _ in variables)
    check_size(total, str(path))


def _read_with_wfdb(record: Path) -> np.ndarray:
    try:
        rec = wfdb.rdrecord(str(record), physical=True)
    except Exception as exc:  # anything wfdb cannot decode is a per-record problem
        raise SkipRecord("unreadable signal file", f"{record}: {exc}") from None
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: zeroed and counted by check_finite
        return np.asarray(rec.p_signal, dtype=np.float32).T.copy()


def read_wfdb(record: str | Path) -> WfdbSignal:
    """Read one WFDB record (path without extension) into the standard 12-lead layout.

    Raises:
        SkipRecord: "missing header", "malformed header", "multi-segment record", "missing signal file",
            "truncated signal", "header length mismatch", "missing variable", "unreadable signal file",
            "unknown lead", "all-NaN lead".
    """
    record = Path(record)
    header = read_header(record)
    if all(f.lower().endswith(".mat") for f in header.file_name):
        raw = _read_cinc_mat(record, header)
    else:
        files = _check_sizes(record, header)
        raw = _read_numpy(header, files) if _fast_path(header) else _read_with_wfdb(record)
    unknown_units = to_millivolts(raw, header.units)
    if unknown_units:
        logger.debug("%s: unknown units %s left unscaled", record, unknown_units)
    signal, missing, dropped = arrange_leads(raw, header.sig_name)
    nan_samples = check_finite(signal, STANDARD_LEADS)
    return WfdbSignal(signal=signal, fs=header.fs, comments=header.comments, missing_leads=missing,
                      dropped_channels=dropped, nan_samples=nan_samples)

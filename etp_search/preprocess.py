"""Signal preprocessing as named presets: resample, band-pass, crop/pad to 10 s, NaN repair, z-score.

Every cache, store and checkpoint records the preset it was made with (``Preset.to_dict``), so a
model is never fed signals prepared differently from the ones it was trained on.

Order of the steps, and why:

1. NaN repair on the native signal: a few missing samples are linearly interpolated; a lead that is
   mostly NaN, or flat (no signal at all), becomes zeros and is flagged. NaN must never reach the
   filters (one NaN poisons a whole filtered lead) or the model.
2. Resample to the preset rate with ``resample_poly`` (polyphase FIR with an anti-alias filter and
   no phase shift), using the exact rational ratio target/native.
3. Band-pass with a zero-phase Butterworth (``sosfiltfilt``) on the whole record, before cropping,
   so the filter's edge transients fall mostly outside the kept window.
4. Crop/pad to ``seconds``: a longer record is centre-cropped (the middle of a 6-60 s CPSC record is
   the part least affected by electrode settling at the start and lead-off at the end); a shorter
   record is zero-padded at the end, so sample 0 is always the record's first kept sample.
   A record longer than ``seconds + 2 * PRECROP_MARGIN_S`` (70 s by default; a Holter recording)
   is first centre-cropped to that length at its native rate, so memory and time are bounded by the
   window, not by the record: every step after it sees at most 70 s. The 30 s margins keep the
   filter's edge transients (well under 30 s for a 0.5 Hz Butterworth) out of the kept window.
5. Per-lead z-score over the real (unpadded) samples only, with an epsilon, so padding stays exactly
   0 and a flat lead stays 0 instead of becoming 0/0.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
from scipy import signal as sps

from etp_search.errors import DataError, EtpError
from etp_search.readers.base import MAX_FS, MIN_FS, MIN_SECONDS, SkipRecord
from etp_search.records import STANDARD_LEADS

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "etp-100hz"
#: Native seconds kept on each side of the output window before a long record is processed.
PRECROP_MARGIN_S = 30.0
#: Longest output window a preset may ask for (one hour; the model's is 10 s).
MAX_PRESET_SECONDS = 3600.0


class RejectedSignal(SkipRecord, DataError):
    """A signal preprocessing refuses: a counted skip inside a pipeline, one error line for a user.

    Both at once on purpose: pipelines that count ``SkipRecord`` count it, and the CLI, which turns
    every ``EtpError`` into one line, shows it when a user passed the signal (``query --ecg``).
    """


def _in_range(value: Any, lo: float, hi: float) -> bool:
    try:
        return lo <= float(value) <= hi  # NaN compares False
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Preset:
    """How raw 12-lead signals become model input.

    Attributes:
        name: Registry name, recorded with every output.
        fs: Target sampling rate in Hz.
        seconds: Output duration; longer records are centre-cropped, shorter zero-padded at the end.
        bandpass: (low, high) cut-offs in Hz of the zero-phase Butterworth band-pass, or None for none.
        filter_order: Butterworth order per pass; sosfiltfilt runs it twice, doubling the roll-off.
        normalize: Per-lead z-score over the unpadded samples.
        eps: Added to the standard deviation so flat leads stay 0 rather than 0/0.
        max_nan_fraction: A lead with at most this fraction of NaN samples is interpolated; above
            it the lead carries too little signal to trust and becomes zeros (flagged).
        flat_std_mv: A lead whose standard deviation (mV) is below this is flat: zeros, flagged.
            1 uV is one ADC step of PTB-XL (gain 1000/mV), so anything below it is no signal.
    """

    name: str
    fs: int
    seconds: float = 10.0
    bandpass: tuple[float, float] | None = None
    filter_order: int = 3
    normalize: bool = False
    eps: float = 1e-6
    max_nan_fraction: float = 0.2
    flat_std_mv: float = 1e-3

    def __post_init__(self) -> None:
        # A preset also comes back from checkpoint/cache JSON: damaged numbers stop here in one line.
        problems = []
        if not _in_range(self.fs, MIN_FS, MAX_FS):
            problems.append(f"fs {self.fs!r} (expected {MIN_FS:g}-{MAX_FS:g} Hz)")
        if not _in_range(self.seconds, 1e-3, MAX_PRESET_SECONDS):
            problems.append(f"seconds {self.seconds!r} (expected up to {MAX_PRESET_SECONDS:g})")
        if self.bandpass is not None and not (len(self.bandpass) == 2 and _in_range(self.bandpass[0], 1e-6, MAX_FS)
                                              and _in_range(self.bandpass[1], self.bandpass[0], MAX_FS)):
            problems.append(f"bandpass {self.bandpass!r} (expected (low, high) with 0 < low < high)")
        if not isinstance(self.filter_order, int) or not 1 <= self.filter_order <= 10:
            problems.append(f"filter_order {self.filter_order!r} (expected 1-10)")
        if not _in_range(self.max_nan_fraction, 0.0, 1.0):
            problems.append(f"max_nan_fraction {self.max_nan_fraction!r} (expected 0-1)")
        if problems:
            raise EtpError(f"preset {self.name!r} has invalid {', '.join(problems)}; "
                           "pass a preset of this toolkit (etp_search.preprocess.list_presets())")

    @property
    def length(self) -> int:
        """Samples per lead in the output."""
        return int(round(self.fs * self.seconds))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bandpass"] = list(self.bandpass) if self.bandpass is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preset":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict):
            raise EtpError(f"preset must be a JSON object of {sorted(known)}, got {type(d).__name__}")
        unknown = set(d) - known
        if unknown:
            raise EtpError(f"preset has unknown fields {sorted(unknown)}; known fields: {sorted(known)}")
        d = dict(d)
        if d.get("bandpass") is not None:
            try:
                d["bandpass"] = tuple(float(x) for x in d["bandpass"])
            except (TypeError, ValueError):
                raise EtpError(f"preset has invalid bandpass {d['bandpass']!r}; expected [low, high] in Hz") from None
        try:
            return cls(**d)
        except TypeError as exc:  # a required field missing
            raise EtpError(f"preset is incomplete ({exc}); known fields: {sorted(known)}") from None


# Cut-offs. The 0.5 Hz high-pass removes baseline wander (respiration 0.1-0.5 Hz, electrode drift);
# with a zero-phase filter it leaves the ST segment essentially undistorted (AHA/ACCF/HRS 2007,
# Kligfield et al.: up to 0.67 Hz is acceptable for bidirectional filters, 0.05 Hz for causal ones).
# The low-pass at 100 Hz input stays below Nyquist (50 Hz) at 45 Hz; at 500 Hz 100 Hz keeps QRS
# notching and fragmentation content while removing most muscle (EMG) noise above it. Mains hum at
# 50/60 Hz is not notched: PTB-XL's 500 Hz data and the CinC/CPSC data are already mains-filtered.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("etp-100hz", fs=100, bandpass=(0.5, 45.0), normalize=True),
        Preset("etp-500hz", fs=500, bandpass=(0.5, 100.0), normalize=True),
        Preset("raw-100hz", fs=100),
        Preset("raw-500hz", fs=500),
    )
}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up by name (a Preset passes through); unknown names list the known ones."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise EtpError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


@functools.lru_cache(maxsize=32)
def _bandpass_sos(fs: float, low: float, high: float, order: int) -> np.ndarray:
    nyq = fs / 2.0
    if high >= nyq:  # a cut-off at/above Nyquist is meaningless: keep only the high-pass part
        return sps.butter(order, low, btype="highpass", fs=fs, output="sos")
    return sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")


def _rational(target: float, native: float) -> tuple[int, int]:
    frac = Fraction(float(target) / float(native)).limit_denominator(1000)
    # Both rates lie in MIN_FS..MAX_FS, so the ratio lies in 1/200..200 and neither term is 0.
    return max(frac.numerator, 1), max(frac.denominator, 1)


def _repair(x: np.ndarray, preset: Preset, leads: Sequence[str], flags: dict[str, Any]) -> np.ndarray:
    """Interpolate sparse NaNs; zero and flag mostly-NaN and flat leads. x is float64 (12, L)."""
    nan = np.isnan(x)
    bad_rows = np.flatnonzero(nan.any(axis=1))
    if bad_rows.size:
        n = x.shape[1]
        idx = np.arange(n)
        frac = nan[bad_rows].mean(axis=1)
        for row, f in zip(bad_rows.tolist(), frac):
            if f > preset.max_nan_fraction:
                x[row] = 0.0
                flags["nan_leads"].append(leads[row])
            else:  # edges take the nearest finite sample (np.interp holds the end values)
                ok = ~nan[row]
                x[row, ~ok] = np.interp(idx[~ok], idx[ok], x[row, ok])
                flags["interpolated_leads"].append(leads[row])
    with np.errstate(over="ignore", invalid="ignore"):  # absurd amplitudes fail later, with a reason
        std = x.std(axis=1)
    flat = np.flatnonzero(std < preset.flat_std_mv)
    for row in flat.tolist():
        if leads[row] not in flags["nan_leads"]:
            flags["flat_leads"].append(leads[row])
    x[flat] = 0.0
    return x


def preprocess(
    signal: np.ndarray, fs: float, preset: str | Preset = DEFAULT_PRESET, leads: Sequence[str] = STANDARD_LEADS
) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn one raw (12, L) signal in mV into model input.

    Args:
        signal: (12, L) array, rows in ``leads`` order (missing leads already 0).
        fs: Native sampling rate in Hz.
        preset: Preset or its name.
        leads: Lead names, only used to name flagged leads.

    Returns:
        (12, preset.length) float32 and flags: ``nan_leads`` (mostly NaN, zeroed), ``flat_leads``
        (no signal, zeroed), ``interpolated_leads`` (sparse NaNs filled), ``orig_seconds``,
        ``cropped``, ``padded``.

    Raises:
        RejectedSignal: a signal that is not (12, L) real numbers, a rate outside MIN_FS..MAX_FS
            (a damaged header: 0.01 Hz would resample 10,000-fold), under MIN_SECONDS long, or with
            no signal (every lead flat or missing).
    """
    p = get_preset(preset)
    try:
        x = np.asarray(signal)  # no copy yet: a long record is cropped before anything is allocated for it
    except (TypeError, ValueError):  # ragged rows
        raise RejectedSignal("bad signal shape", f"expected a ({len(leads)}, samples) array of numbers") from None
    if np.iscomplexobj(x):
        raise RejectedSignal("complex signal", "an ECG is real-valued; pass its real samples")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise RejectedSignal("bad signal type", f"expected numbers, got {x.dtype} values")
    if x.ndim != 2 or x.shape[0] != len(leads):
        raise RejectedSignal("bad signal shape", f"expected a ({len(leads)}, samples) signal, got shape {x.shape}; "
                             "transpose (samples, leads) input")
    try:
        native = float(fs)
    except (TypeError, ValueError):
        native = float("nan")
    if not MIN_FS <= native <= MAX_FS:
        raise RejectedSignal("sampling rate out of range", f"{fs!r} Hz; an ECG is recorded at {MIN_FS:g}-{MAX_FS:g} Hz")
    if x.shape[1] < MIN_SECONDS * native:
        raise RejectedSignal("empty signal" if x.shape[1] == 0 else "signal too short",
                             f"{x.shape[1]} samples at {native:g} Hz; at least {MIN_SECONDS:g} s are needed")
    flags: dict[str, Any] = {
        "nan_leads": [], "flat_leads": [], "interpolated_leads": [],
        "orig_seconds": x.shape[1] / native, "cropped": False, "padded": False,
    }
    keep = int(np.ceil((p.seconds + 2 * PRECROP_MARGIN_S) * native))
    if x.shape[1] > keep:  # bound the work by the window, not the record (see step 4 above)
        start = (x.shape[1] - keep) // 2
        x = x[:, start:start + keep]
        flags["cropped"] = True
    x = _repair(np.array(x, dtype=np.float64), p, leads, flags)  # always a copy: the caller's array is kept
    if len(set(flags["nan_leads"]) | set(flags["flat_leads"])) >= x.shape[0]:
        # an all-zero array was written as a record and came back from queries (score 0.31)
        raise RejectedSignal("no signal", "every lead is flat (constant) or missing; pass a recorded ECG")

    if native != float(p.fs):
        up, down = _rational(p.fs, native)
        x = sps.resample_poly(x, up, down, axis=1)

    if p.bandpass is not None and x.shape[1] > 1:
        sos = _bandpass_sos(float(p.fs), float(p.bandpass[0]), float(p.bandpass[1]), p.filter_order)
        # sosfiltfilt's default edge padding needs more samples than a very short record has.
        padlen = min(3 * (2 * len(sos) + 1), x.shape[1] - 1)
        x = sps.sosfiltfilt(sos, x, axis=1, padlen=padlen)

    n, length = x.shape[1], p.length
    if n > length:
        start = (n - length) // 2
        x = x[:, start:start + length]
        flags["cropped"] = True
        n = length

    if p.normalize:
        mean = x.mean(axis=1, keepdims=True)
        std = x.std(axis=1, keepdims=True)
        x = (x - mean) / (std + p.eps)
        dead = flags["nan_leads"] + flags["flat_leads"]
        if dead:  # keep zeroed leads exactly 0 (mean/std of zeros is 0, this is belt and braces)
            x[[list(leads).index(name) for name in dead]] = 0.0

    out = np.zeros((x.shape[0], length), dtype=np.float32)
    with np.errstate(over="ignore"):  # an overflow is caught just below, with its reason
        out[:, :n] = x
    if n < length:
        flags["padded"] = True
    if not np.isfinite(out).all():  # e.g. samples near float32's limit overflowing in the filter
        raise RejectedSignal("non-finite signal", "preprocessing produced inf/NaN; the samples are out of range "
                             "for an ECG in mV")
    return out, flags

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

from etp_search.errors import EtpError
from etp_search.records import STANDARD_LEADS

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "etp-100hz"


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
        unknown = set(d) - known
        if unknown:
            raise EtpError(f"preset has unknown fields {sorted(unknown)}; known fields: {sorted(known)}")
        d = dict(d)
        if d.get("bandpass") is not None:
            d["bandpass"] = tuple(float(x) for x in d["bandpass"])
        return cls(**d)


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
    return frac.numerator, frac.denominator


def _repair(x: np.ndarray, preset: Preset, leads: Sequence[str], flags: dict[str, Any]) -> np.ndarray:
    """Interpolate sparse NaNs; zero and flag mostly-NaN and flat leads. x is float64 (12, L)."""
    nan = np.isnan(x)
    bad_rows = np.flatnonzero(nan.any(axis=1))
    if bad_rows.size:
        n = x.shape[1]
        idx = np.arange(n)
        frac = nan[bad_rows].mean(axis=1)
        for row, f in zip(bad_rows, frac):
            if f > preset.max_nan_fraction:
                x[row] = 0.0
                flags["nan_leads"].append(leads[row])
            else:  # edges take the nearest finite sample (np.interp holds the end values)
                ok = ~nan[row]
                x[row, ~ok] = np.interp(idx[~ok], idx[ok], x[row, ok])
                flags["interpolated_leads"].append(leads[row])
    std = x.std(axis=1)
    flat = np.flatnonzero(std < preset.flat_std_mv)
    for row in flat:
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
    """
    p = get_preset(preset)
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(leads):
        raise EtpError(f"expected a ({len(leads)}, samples) signal, got shape {x.shape}; transpose (samples, leads) input")
    if not fs or fs <= 0:
        raise EtpError(f"sampling rate must be positive, got {fs!r}")
    x = x.copy()
    flags: dict[str, Any] = {
        "nan_leads": [], "flat_leads": [], "interpolated_leads": [],
        "orig_seconds": x.shape[1] / float(fs), "cropped": False, "padded": False,
    }
    if x.shape[1] == 0:
        flags["padded"] = True
        return np.zeros((len(leads), p.length), np.float32), flags
    x = _repair(x, p, leads, flags)

    if float(fs) != float(p.fs):
        up, down = _rational(p.fs, fs)
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
    out[:, :n] = x
    if n < length:
        flags["padded"] = True
    return out, flags

"""Pictures of ECGs for the page: compact thumbnail data and full ECG-paper plots.

Thumbnails are drawn by the browser on a <canvas> from a downsampled copy of the 12 leads (a few
kB of JSON per record), so a page of 10 result cards costs the server no image rendering. The full
record view is a real ECG printout from :mod:`etp_search.plotting` (25 mm/s, 10 mm/mV, paper grid)
rendered to PNG or SVG in memory.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np

from etp_search.records import STANDARD_LEADS

FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
#: Matplotlib's text and font caches are shared by all figures; render one figure at a time.
_RENDER_LOCK = threading.Lock()


def thumbnail(signal: np.ndarray, fs: float, points: int = 400, seconds: float = 10.0) -> dict[str, Any]:
    """The first ``seconds`` of each lead cut into at most ``points`` equal bins (mV, 3 decimals), for drawing.

    Each point is the sample of largest magnitude in its bin, so QRS peaks survive the downsampling.
    """
    sig = np.nan_to_num(np.asarray(signal, dtype=np.float32)[:, : max(1, int(round(seconds * fs)))])
    n = sig.shape[1]
    size = max(1, -(-n // max(1, points)))  # samples per bin (ceil), so there are at most `points` bins
    bins = -(-n // size)
    padded = np.zeros((sig.shape[0], bins * size), dtype=np.float32)
    padded[:, :n] = sig  # zero padding never wins an argmax of |x| over a real sample... unless all are 0
    blocks = padded.reshape(sig.shape[0], bins, size)
    pick = np.abs(blocks).argmax(axis=2)[..., None]
    out = np.take_along_axis(blocks, pick, axis=2)[..., 0]
    return {"fs": float(fs), "seconds": n / float(fs), "points": bins, "leads": list(STANDARD_LEADS),
            "units": "mV", "data": np.round(out.astype(np.float64), 3).tolist()}  # float64: 0.192, not 0.19200000166893005


def render(signal: np.ndarray, fs: float, fmt: str, title: str, layout: str = "3x4+II", dpi: float = 100.0) -> bytes:
    """A standard 12-lead printout of one ECG as PNG or SVG bytes."""
    from etp_search.plotting import ecg_figure

    buf = io.BytesIO()
    with _RENDER_LOCK:
        fig = ecg_figure(np.asarray(signal, np.float32), fs=fs, title=title, layout=layout)
        # No bbox_inches="tight": it would crop the page and break the millimetre scale.
        fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white")
    return buf.getvalue()

"""ECG printouts on standard paper: 12-lead grids and query-result sheets.

Everything is laid out in real millimetres: 25 mm/s, 10 mm/mV, 1 mm minor grid (0.04 s, 0.1 mV) and
5 mm major grid (0.2 s, 0.5 mV). The figure size is set in millimetres too, so a PNG saved at ``dpi``
is ``width_mm / 25.4 * dpi`` pixels wide and a PDF prints at true scale at 100 %.

Each ECG panel is one matplotlib Axes (on a headless Agg canvas) whose x data are seconds and y data
are millivolts; its physical size is exactly ``(xlim span) * 25`` mm by ``(ylim span) * 10`` mm.
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from etp_search.errors import DataError
from etp_search.records import STANDARD_LEADS
from indexing._io import atomic_write

logger = logging.getLogger(__name__)

#: Paper speed and gain of a standard ECG printout.
MM_PER_S = 25.0
MM_PER_MV = 10.0
MINOR_S, MAJOR_S = 0.04, 0.2
MINOR_MV, MAJOR_MV = 0.1, 0.5
#: Longest stretch drawn; longer signals are cut to their first 10 s like a standard printout.
MAX_SECONDS = 10.0
#: Width (s) of the calibration-pulse area left of t = 0; a multiple of MAJOR_S so edges sit on major lines.
CAL_AREA_S = 0.4
LAYOUTS = ("3x4+II", "12x1")
#: Vertical distance between lead baselines (mV) per layout; 3 mV = 30 mm keeps most QRS inside a row.
ROW_PITCH_MV = {"3x4+II": 3.0, "12x1": 2.5}
#: Rows of the classic layout; each column shows the next 2.5 s of the same recording.
GRID_3X4 = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"

# Page margins around each panel (mm): title band above, footer below.
MARGIN_X_MM, TITLE_MM, FOOTER_MM = 8.0, 12.0, 7.0
HEADER_MM = 16.0  # text-query header band of a results sheet

PAPER_COLOR = "#fff7f7"
MINOR_COLOR = "#f6c4c4"
MAJOR_COLOR = "#e06666"
TRACE_COLOR = "black"
PT_PER_MM = 72.0 / 25.4


class PlotInputError(DataError, ValueError):
    """A signal, sampling rate or layout cannot be plotted (a ValueError and a user-facing DataError)."""


@dataclass(frozen=True)
class PanelGeometry:
    """Where one ECG sits on paper.

    Attributes:
        xlim: Axes x range in seconds (calibration area starts below 0).
        ylim: Axes y range in millivolts.
        column_s: Seconds per column of the 3x4 block (the whole strip for 12x1).
        duration_s: Seconds of signal drawn.
    """

    xlim: tuple[float, float]
    ylim: tuple[float, float]
    column_s: float
    duration_s: float

    @property
    def grid_mm(self) -> tuple[float, float]:
        """Paper (grid) size in millimetres, width and height."""
        return ((self.xlim[1] - self.xlim[0]) * MM_PER_S, (self.ylim[1] - self.ylim[0]) * MM_PER_MV)

    @property
    def page_mm(self) -> tuple[float, float]:
        """Panel size including margins, title band and footer."""
        w, h = self.grid_mm
        return w + 2 * MARGIN_X_MM, h + TITLE_MM + FOOTER_MM


def _ceil_to(x: float, step: float) -> float:
    return math.ceil(round(x / step, 6)) * step


def panel_geometry(n_samples: int, fs: float, layout: str = "3x4+II", n_leads: int = 12) -> PanelGeometry:
    """Paper geometry of one ECG of ``n_samples`` at ``fs`` Hz in ``layout``."""
    _check_layout(layout)
    duration = min(n_samples / fs, MAX_SECONDS)
    pitch = ROW_PITCH_MV[layout]
    n_rows = 4 if layout == "3x4+II" else n_leads
    # A short recording keeps true scale; its four columns split whatever time there is.
    column_s = duration / 4 if layout == "3x4+II" else duration
    # Edges on major lines so the paper looks like a cut from a real roll.
    x1 = _ceil_to(duration, MAJOR_S)
    top = _ceil_to(pitch / 2, MAJOR_MV)
    # Rows take ``pitch`` each in total: the first row's headroom comes out of the last row's legroom.
    bottom = -(n_rows - 1) * pitch - max(_ceil_to(pitch - top, MAJOR_MV), MAJOR_MV)
    return PanelGeometry((-CAL_AREA_S, x1), (bottom, top), column_s, duration)


def _two_lines(text: str, width: int) -> str:
    """Wrap to at most two lines, marking a cut with an ellipsis so a long label list never overflows."""
    lines = textwrap.wrap(text, width)
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), width, placeholder=" …")]
    return "\n".join(lines)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise PlotInputError(f"unknown ECG layout {layout!r}; use one of: {', '.join(LAYOUTS)}")


def _check_signal(signal: np.ndarray, fs: float, leads: Sequence[str], layout: str, what: str) -> np.ndarray:
    """Validate one ECG at the boundary and return it as a float array."""
    sig = np.asarray(signal, dtype=np.float64)
    if not (isinstance(fs, (int, float, np.number)) and math.isfinite(fs) and fs > 0):
        raise PlotInputError(f"{what}: sampling rate must be a positive number of Hz, got {fs!r}")
    if sig.ndim != 2:
        raise PlotInputError(f"{what}: expected a (leads, samples) array, got shape {sig.shape}")
    if sig.shape[0] != len(leads):
        raise PlotInputError(
            f"{what}: signal has {sig.shape[0]} leads (shape {sig.shape}) but {len(leads)} lead names were "
            f"given ({', '.join(leads)}); pass a ({len(leads)}, samples) array in that order"
        )
    if sig.shape[1] < 2:
        raise PlotInputError(f"{what}: signal has {sig.shape[1]} samples; need at least 2 to draw a trace")
    if layout == "3x4+II":
        have = {name.lower() for name in leads}  # WFDB headers often write AVR/AVL/AVF
        missing = [lead for lead in STANDARD_LEADS if lead.lower() not in have]
        if missing:
            raise PlotInputError(
                f"{what}: layout '3x4+II' needs the 12 standard leads; missing {', '.join(missing)} "
                f"(use layout='12x1' for other lead sets)"
            )
    return sig


def _draw_paper(ax: Axes, geom: PanelGeometry) -> None:
    """Pink 1 mm / red 5 mm grid, drawn as two line collections (fast, and inspectable by gid)."""
    (x0, x1), (y0, y1) = geom.xlim, geom.ylim
    # Integer grid indices avoid float drift: line k sits at k * minor step.
    xs = np.arange(math.ceil(round(x0 / MINOR_S, 6)), math.floor(round(x1 / MINOR_S, 6)) + 1)
    ys = np.arange(math.ceil(round(y0 / MINOR_MV, 6)), math.floor(round(y1 / MINOR_MV, 6)) + 1)
    for major, color, width_mm, gid in ((False, MINOR_COLOR, 0.1, "ecg-grid-minor"),
                                        (True, MAJOR_COLOR, 0.2, "ecg-grid-major")):
        segs: list[tuple[tuple[float, float], tuple[float, float]]] = [
            ((k * MINOR_S, y0), (k * MINOR_S, y1)) for k in xs if (k % 5 == 0) == major]
        segs += [((x0, k * MINOR_MV), (x1, k * MINOR_MV)) for k in ys if (k % 5 == 0) == major]
        ax.add_collection(LineCollection(segs, colors=color, linewidths=width_mm * PT_PER_MM,
                                         gid=gid, zorder=0 if not major else 0.5))


def _trace(ax: Axes, t: np.ndarray, y: np.ndarray) -> None:
    ax.plot(t, y, color=TRACE_COLOR, linewidth=0.22 * PT_PER_MM, solid_joinstyle="round", zorder=3)


def _label(ax: Axes, x: float, baseline: float, text: str) -> None:
    ax.text(x, baseline + 0.9, text, fontsize=8, fontweight="bold", ha="left", va="bottom", zorder=4)


def _calibration(ax: Axes, baseline: float) -> None:
    """1 mV x 0.2 s square pulse in the area left of t = 0."""
    t = np.array([-0.35, -0.3, -0.3, -0.1, -0.1, -0.05])
    y = baseline + np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    ax.plot(t, y, color=TRACE_COLOR, linewidth=0.22 * PT_PER_MM, gid="ecg-calibration", zorder=3)


def draw_ecg(
    fig: Figure,
    signal: np.ndarray,
    fs: float,
    origin_mm: tuple[float, float],
    fig_size_mm: tuple[float, float],
    *,
    leads: Sequence[str] = STANDARD_LEADS,
    title: str | None = None,
    layout: str = "3x4+II",
) -> Axes:
    """Draw one ECG panel whose page area's lower-left corner is ``origin_mm`` on ``fig``.

    Args:
        fig: Figure sized ``fig_size_mm`` (width, height) in millimetres.
        signal: (leads, samples) in millivolts.
        fs: Sampling rate in Hz.
        origin_mm: Lower-left corner of the panel's page area (margins included), mm from the figure's
            lower-left corner.
        fig_size_mm: The figure's size in millimetres, to convert positions to figure fractions.
        leads: Lead names of the signal rows.
        title: Text above the grid (wrapped to two lines).
        layout: "3x4+II" (classic three rows of four 2.5 s columns plus a lead-II rhythm strip) or
            "12x1" (every lead over the full duration).

    Returns:
        The grid Axes (x in seconds, y in millivolts).
    """
    _check_layout(layout)
    leads = tuple(leads)
    sig = _check_signal(signal, fs, leads, layout, title or "ECG")
    geom = panel_geometry(sig.shape[1], float(fs), layout, len(leads))
    if sig.shape[1] / fs > MAX_SECONDS + 1e-9:
        logger.debug("drawing the first %.1f s of a %.1f s signal", MAX_SECONDS, sig.shape[1] / fs)
    grid_w, grid_h = geom.grid_mm
    fw, fh = fig_size_mm
    left, bottom = origin_mm[0] + MARGIN_X_MM, origin_mm[1] + FOOTER_MM
    ax = fig.add_axes((left / fw, bottom / fh, grid_w / fw, grid_h / fh))
    ax.set_xlim(*geom.xlim)
    ax.set_ylim(*geom.ylim)
    ax.set_facecolor(PAPER_COLOR)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(MAJOR_COLOR)
        spine.set_linewidth(0.3 * PT_PER_MM)
    _draw_paper(ax, geom)

    n = min(sig.shape[1], int(round(geom.duration_s * fs)))
    t = np.arange(n) / fs
    pitch = ROW_PITCH_MV[layout]
    index = {name.lower(): i for i, name in enumerate(leads)}
    if layout == "3x4+II":
        for r, row in enumerate(GRID_3X4):
            base = -r * pitch
            _calibration(ax, base)
            for c, name in enumerate(row):
                i0 = int(round(c * geom.column_s * fs))
                i1 = min(n, int(round((c + 1) * geom.column_s * fs)) + 1)  # +1 joins adjacent columns
                _trace(ax, t[i0:i1], base + sig[index[name.lower()], i0:i1])
                _label(ax, c * geom.column_s + 0.04, base, name)
                if c:  # short lead-change marker, as on printed ECGs
                    ax.plot([c * geom.column_s] * 2, [base - 0.3, base + 0.3], color=TRACE_COLOR,
                            linewidth=0.22 * PT_PER_MM, zorder=3)
        base = -3 * pitch
        _calibration(ax, base)
        _trace(ax, t, base + sig[index[RHYTHM_LEAD.lower()], :n])
        _label(ax, 0.04, base, RHYTHM_LEAD)
    else:
        for r, name in enumerate(leads):
            base = -r * pitch
            _calibration(ax, base)
            _trace(ax, t, base + sig[r, :n])
            _label(ax, 0.04, base, name)

    page_w = grid_w + 2 * MARGIN_X_MM
    if title:
        chars = max(20, int(page_w / 1.9))  # ~1.9 mm per character at 9 pt
        text = _two_lines(title, chars)
        fig.text(left / fw, (bottom + grid_h + 1.5) / fh, text, fontsize=9, ha="left", va="bottom")
    footer = f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   {fs:g} Hz   {geom.duration_s:.1f} s"
    fig.text((left + grid_w) / fw, (bottom - 1.5) / fh, footer, fontsize=7, ha="right", va="top",
             color="#555555")
    return ax


def _as_panels(panels: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(panels, np.ndarray):
        if panels.ndim == 3:
            return list(panels)
        return [panels]
    return [np.asarray(p) for p in panels]


def _save(fig: Figure, out_path: Path, dpi: float) -> None:
    """Save atomically so a crash never leaves a half-written image behind."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": it would crop the page and break the physical scale. The temporary
    # name keeps the suffix, from which matplotlib picks the format.
    atomic_write(out_path, lambda tmp: fig.savefig(tmp, dpi=dpi, facecolor="white"))


def ecg_figure(
    panels: np.ndarray | Sequence[np.ndarray],
    *,
    fs: float,
    leads: Sequence[str] = STANDARD_LEADS,
    title: str | Sequence[str] | None = None,
    layout: str = "3x4+II",
) -> Figure:
    """Build (without saving) a figure of one or more ECGs stacked top to bottom, sized in mm.

    The figure is not registered with pyplot, so it needs no closing; see ``plot_ecg_grid`` for arguments.
    """
    _check_layout(layout)
    sigs = _as_panels(panels)
    if not sigs:
        raise PlotInputError("no ECG to plot; pass a (12, samples) array or a list of them")
    titles = [title] * len(sigs) if title is None or isinstance(title, str) else list(title)
    if len(titles) != len(sigs):
        raise PlotInputError(f"got {len(titles)} titles for {len(sigs)} ECGs; pass one title per ECG")
    checked = [_check_signal(s, fs, tuple(leads), layout, t or f"ECG {i}")
               for i, (s, t) in enumerate(zip(sigs, titles))]
    return _stack([(s, float(fs), t) for s, t in zip(checked, titles)], leads=leads, layout=layout)


def _stack(items: Sequence[tuple[np.ndarray, float, str | None]], *, leads: Sequence[str], layout: str,
           header: str | None = None) -> Figure:
    """One figure with ``items`` (signal, fs, title) stacked, optional text header band on top."""
    sizes = [panel_geometry(s.shape[1], f, layout, len(leads)).page_mm for s, f, _ in items]
    width = max([w for w, _ in sizes] + [150.0 if header else 0.0])
    height = sum(h for _, h in sizes) + (HEADER_MM if header else 0.0)
    # A bare Figure on an Agg canvas: headless, and no pyplot global state (or backend switch) imposed on
    # the caller, so nothing needs closing and notebooks keep their own backend.
    fig = Figure(figsize=(width / 25.4, height / 25.4))
    FigureCanvasAgg(fig)
    y = height
    if header:
        y -= HEADER_MM
        text = _two_lines(header, max(20, int(width / 2.3)))
        fig.text(MARGIN_X_MM / width, (y + HEADER_MM / 2) / height, text, fontsize=11, fontweight="bold",
                 ha="left", va="center")
    for (sig, f, t), (_, h) in zip(items, sizes):
        y -= h
        draw_ecg(fig, sig, f, (0.0, y), (width, height), leads=leads, title=t, layout=layout)
    return fig


def plot_ecg_grid(
    panels: np.ndarray | Sequence[np.ndarray],
    out_path: str | os.PathLike,
    *,
    fs: float,
    leads: Sequence[str] = STANDARD_LEADS,
    title: str | Sequence[str] | None = None,
    layout: str = "3x4+II",
    dpi: float = 150.0,
) -> Path:
    """Save one or more ECGs as a standard 12-lead printout (PNG, PDF or SVG by extension).

    Args:
        panels: A (leads, samples) signal in millivolts, a (N, leads, samples) array or a list of signals;
            several ECGs are stacked top to bottom on one page.
        out_path: Output file; the extension picks the format.
        fs: Sampling rate in Hz (any rate; 100 Hz and 500 Hz are typical).
        leads: Names of the signal rows.
        title: One title, or one per ECG.
        layout: "3x4+II" or "12x1".
        dpi: Raster resolution; the page stays at true millimetre scale whatever the DPI.

    Returns:
        The path written.

    Raises:
        PlotInputError: (a ValueError) for a signal of the wrong shape, a bad rate or layout.
    """
    fig = ecg_figure(panels, fs=fs, leads=leads, title=title, layout=layout)
    out = Path(out_path)
    _save(fig, out, dpi)
    logger.info("wrote ECG printout %s", out)
    return out


def plot_query_results(
    query_signal: np.ndarray | None,
    query_title: str,
    hits: Sequence[tuple[np.ndarray, float, str]],
    out_path: str | os.PathLike,
    fs: float | None = None,
    *,
    leads: Sequence[str] = STANDARD_LEADS,
    layout: str = "3x4+II",
    dpi: float = 150.0,
) -> Path:
    """Save a query and its top hits as ECG printouts: one tall PNG, or one page per ECG for ``.pdf``.

    Args:
        query_signal: The query ECG (leads, samples) in mV, or None for a text query (then
            ``query_title`` is printed as a header instead of an ECG).
        query_title: Title of the query ECG, or the query text.
        hits: (signal, fs, title) per hit, best first; the title should carry id, score and labels.
        out_path: ``.pdf`` gives a multi-page PDF, any other extension a single stacked page.
        fs: Sampling rate of ``query_signal`` in Hz (required when it is given).
        leads: Lead names of every signal's rows.
        layout: "3x4+II" or "12x1".
        dpi: Raster resolution of a PNG.

    Returns:
        The path written.
    """
    _check_layout(layout)
    leads = tuple(leads)
    items: list[tuple[np.ndarray, float, str | None]] = []
    if query_signal is not None:
        if fs is None:
            raise PlotInputError("a query ECG needs its sampling rate; pass fs=<Hz>")
        items.append((_check_signal(query_signal, fs, leads, layout, "query ECG"), float(fs),
                      f"Query: {query_title}"))
    for rank, hit in enumerate(hits, 1):
        if len(hit) != 3:
            raise PlotInputError(f"hit {rank}: expected (signal, fs, title), got {len(hit)} items")
        sig, hit_fs, hit_title = hit
        items.append((_check_signal(sig, hit_fs, leads, layout, f"hit {rank}"), float(hit_fs),
                      f"#{rank}  {hit_title}"))
    header = None if query_signal is not None else f"Query: {query_title}"
    if not items and header is None:
        raise PlotInputError("nothing to plot: no query ECG and no hits")

    out = Path(out_path)
    if out.suffix.lower() == ".pdf":
        out.parent.mkdir(parents=True, exist_ok=True)

        def write_pdf(tmp: Path) -> None:
            with PdfPages(tmp) as pdf:
                # A text query with no hits still gets its header page.
                for page in [[item] for item in items] or [[]]:
                    # The text-query header repeats on every page so each says what was searched.
                    fig = _stack(page, leads=leads, layout=layout, header=header)
                    pdf.savefig(fig)

        atomic_write(out, write_pdf)
    else:
        _save(_stack(items, leads=leads, layout=layout, header=header), out, dpi)
    logger.info("wrote query results (%d hits) to %s", len(hits), out)
    return out

"""ECG printouts: true paper scale (25 mm/s, 10 mm/mV), grid spacing, layouts, query sheets, bad input."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from etp_search.errors import EtpError
from etp_search.plotting import ecg_figure, plot_ecg_grid, plot_query_results
from etp_search.records import STANDARD_LEADS
from tests.conftest import EXAMPLE_PTBXL

wfdb = pytest.importorskip("wfdb")

# Page of one 10 s ECG in the 3x4+II layout, worked out by hand: 0.4 s calibration area + 10 s at 25 mm/s
# plus 8 mm margins either side; 4 rows x 3 mV at 10 mm/mV plus a 12 mm title band and 7 mm footer.
PAGE_W_MM = (0.4 + 10.0) * 25 + 2 * 8
PAGE_H_MM = 4 * 3.0 * 10 + 12 + 7


@pytest.fixture(scope="module")
def ecg(request: pytest.FixtureRequest) -> tuple[np.ndarray, float]:
    """A real 10 s, 100 Hz PTB-XL record as (12, 1000) mV in STANDARD_LEADS order."""
    heads = sorted((EXAMPLE_PTBXL / "records100").rglob("*.hea")) if EXAMPLE_PTBXL.exists() else []
    if heads:
        path = heads[0].with_suffix("")
    else:
        path = request.getfixturevalue("shared_ptbxl") / "records100" / "00000" / "00001_lr"
    rec = wfdb.rdrecord(str(path))
    order = [[n.lower() for n in rec.sig_name].index(lead.lower()) for lead in STANDARD_LEADS]
    return rec.p_signal.T[order].astype(np.float32), float(rec.fs)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def grid_steps(ax, gid: str) -> tuple[float, float]:
    """Smallest spacing of the vertical (seconds) and horizontal (mV) lines of one grid collection."""
    (coll,) = [c for c in ax.collections if c.get_gid() == gid]
    segs = np.array(coll.get_segments())
    vertical = segs[:, 0, 0] == segs[:, 1, 0]
    xs, ys = np.unique(segs[vertical, 0, 0]), np.unique(segs[~vertical, 0, 1])
    return float(np.diff(xs).min()), float(np.diff(ys).min())


def test_png_has_true_physical_size_at_dpi(ecg, tmp_path: Path) -> None:
    sig, fs = ecg
    for dpi in (100, 200):
        out = plot_ecg_grid(sig, tmp_path / f"ecg{dpi}.png", fs=fs, title="PTB-XL 1", dpi=dpi)
        w, h = png_size(out)
        assert abs(w - PAGE_W_MM / 25.4 * dpi) <= 1
        assert abs(h - PAGE_H_MM / 25.4 * dpi) <= 1


def test_axes_map_seconds_and_millivolts_to_paper_millimetres(ecg) -> None:
    sig, fs = ecg
    fig = ecg_figure(sig, fs=fs)
    (ax,) = fig.axes
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert (x0, x1) == pytest.approx((-0.4, 10.0))
    bbox = ax.get_position()
    fig_w_mm, fig_h_mm = fig.get_size_inches() * 25.4
    assert bbox.width * fig_w_mm == pytest.approx((x1 - x0) * 25.0)  # 25 mm/s
    assert bbox.height * fig_h_mm == pytest.approx((y1 - y0) * 10.0)  # 10 mm/mV
    # 1 mm minor grid = 0.04 s / 0.1 mV; 5 mm major grid = 0.2 s / 0.5 mV.
    assert grid_steps(ax, "ecg-grid-minor") == pytest.approx((0.04, 0.1))
    assert grid_steps(ax, "ecg-grid-major") == pytest.approx((0.2, 0.5))


def test_classic_layout_labels_calibration_and_rhythm_strip(ecg) -> None:
    sig, fs = ecg
    ax = ecg_figure(sig, fs=fs).axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(list(STANDARD_LEADS) + ["II"])  # 12 leads + lead-II rhythm strip
    cals = [line for line in ax.lines if line.get_gid() == "ecg-calibration"]
    assert len(cals) == 4
    t, y = cals[0].get_data()
    assert np.ptp(y) == pytest.approx(1.0)  # 1 mV pulse = 10 mm
    assert t[np.argmax(y) + 1] - t[np.argmax(y)] == pytest.approx(0.2)  # 5 mm wide
    # The longest trace is the 10 s rhythm strip, and it is lead II sample for sample.
    rhythm = max(ax.lines, key=lambda line: len(line.get_xdata()))
    rt, ry = rhythm.get_data()
    assert len(rt) == sig.shape[1] and rt[-1] == pytest.approx((sig.shape[1] - 1) / fs)
    np.testing.assert_allclose(ry - ry.mean(), sig[1] - sig[1].mean(), atol=1e-5)
    # Each 3x4 column covers 2.5 s: lead I occupies the first column only.
    col_lines = [line for line in ax.lines if line.get_gid() is None and 0 < len(line.get_xdata()) < len(rt)]
    starts = sorted({round(float(line.get_xdata()[0]), 2) for line in col_lines if len(line.get_xdata()) > 2})
    assert starts == [0.0, 2.5, 5.0, 7.5]


def test_500hz_and_short_signals_keep_scale(ecg, tmp_path: Path) -> None:
    sig, fs = ecg
    sig500 = np.repeat(sig, 5, axis=1)  # the same real ECG at 500 Hz
    ax = ecg_figure(sig500, fs=5 * fs).axes[0]
    assert ax.get_xlim() == pytest.approx((-0.4, 10.0))
    short = sig[:, : int(4.3 * fs)]
    out = plot_ecg_grid(short, tmp_path / "short.png", fs=fs, dpi=100)
    w, h = png_size(out)
    # 4.3 s rounds up to the next 5 mm major line (4.4 s); the scale stays 25 mm/s.
    assert abs(w - ((0.4 + 4.4) * 25 + 16) / 25.4 * 100) <= 1
    assert abs(h - PAGE_H_MM / 25.4 * 100) <= 1


def test_12x1_layout_and_stacked_panels(ecg) -> None:
    sig, fs = ecg
    fig = ecg_figure(sig, fs=fs, layout="12x1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == list(STANDARD_LEADS)
    assert (ax.get_ylim()[1] - ax.get_ylim()[0]) * 10 == pytest.approx(12 * 25)  # 12 rows x 2.5 mV
    stacked = ecg_figure([sig, sig[:, :500]], fs=fs, title=["a", "b"])
    assert len(stacked.axes) == 2
    assert stacked.get_size_inches()[1] * 25.4 == pytest.approx(2 * PAGE_H_MM)


def test_bad_input_raises_clear_value_error(ecg, tmp_path: Path) -> None:
    sig, fs = ecg
    with pytest.raises(ValueError, match=r"signal has 8 leads .* 12 lead names"):
        plot_ecg_grid(sig[:8], tmp_path / "x.png", fs=fs)
    with pytest.raises(ValueError, match="leads, samples"):
        plot_ecg_grid(sig[0], tmp_path / "x.png", fs=fs)
    with pytest.raises(ValueError, match="sampling rate"):
        plot_ecg_grid(sig, tmp_path / "x.png", fs=0)
    with pytest.raises(ValueError, match="unknown ECG layout 'bogus'; use one of: 3x4\\+II, 12x1"):
        plot_ecg_grid(sig, tmp_path / "x.png", fs=fs, layout="bogus")
    with pytest.raises(ValueError, match="missing V6"):
        plot_ecg_grid(sig[:11], tmp_path / "x.png", fs=fs, leads=STANDARD_LEADS[:11])
    with pytest.raises(EtpError):  # the CLI turns it into a one-line error
        plot_ecg_grid(sig[:8], tmp_path / "x.png", fs=fs)
    assert not (tmp_path / "x.png").exists()


def test_query_results_png_and_pdf(ecg, tmp_path: Path) -> None:
    sig, fs = ecg
    hits = [(sig, fs, "id 1  score 0.812  NORM, SR"), (np.repeat(sig, 5, axis=1), 5 * fs, "id 1 @500Hz")]
    png = plot_query_results(None, "sinus rhythm, normal ECG", hits, tmp_path / "q.png", fs=None, dpi=50)
    w, h = png_size(png)
    assert abs(h - (16 + 2 * PAGE_H_MM) / 25.4 * 50) <= 1  # text header band + two hits
    assert abs(w - PAGE_W_MM / 25.4 * 50) <= 1
    pdf = plot_query_results(sig, "record 1", hits, tmp_path / "q.pdf", fs=fs)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 3  # query + 2 hits, one page each
    with pytest.raises(ValueError, match="hit 2"):
        plot_query_results(None, "q", [hits[0], (sig[:6], fs, "bad")], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="fs="):
        plot_query_results(sig, "q", hits, tmp_path / "bad.png")

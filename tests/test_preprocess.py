"""Preprocessing presets: real PTB-XL/CPSC signals plus synthetic signals whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from etp_search.errors import EtpError
from etp_search.preprocess import PRESETS, Preset, get_preset, list_presets, preprocess
from etp_search.records import STANDARD_LEADS


def _rd(path) -> tuple[np.ndarray, float]:
    r = wfdb.rdrecord(str(path))
    return r.p_signal.T.astype(np.float32), float(r.fs)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_registry_names_and_unknown_lists_them():
    assert list_presets() == ["etp-100hz", "etp-500hz", "raw-100hz", "raw-500hz"]
    assert get_preset("etp-100hz").length == 1000 and get_preset("etp-500hz").length == 5000
    with pytest.raises(EtpError, match="etp-100hz, etp-500hz, raw-100hz, raw-500hz"):
        get_preset("etp-250hz")


def test_preset_dict_roundtrip_and_unknown_field():
    for p in PRESETS.values():
        assert Preset.from_dict(p.to_dict()) == p
    with pytest.raises(EtpError, match="unknown fields"):
        Preset.from_dict({**PRESETS["etp-100hz"].to_dict(), "notch": 50})


@pytest.mark.parametrize("name", list(PRESETS))
def test_real_ptbxl_and_cpsc_shapes(shared_ptbxl, shared_cpsc, name):
    p = get_preset(name)
    for path in (shared_ptbxl / "records100/00000/00001_lr", shared_cpsc / "cinc2020/A0005"):
        x, fs = _rd(path)
        y, flags = preprocess(x, fs, name)
        assert y.shape == (12, p.length) and y.dtype == np.float32 and np.isfinite(y).all()
        if p.normalize:
            np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-3)
            np.testing.assert_allclose(y.std(axis=1), 1, atol=1e-3)
    assert flags["cropped"] and flags["orig_seconds"] == 25.0  # A0005 is 25 s


def test_downsampling_500hz_matches_ptbxl_own_100hz_version(shared_ptbxl):
    # PTB-XL's records100 were made by downsampling records500: our resampling must agree with it.
    hr, fs_hr = _rd(shared_ptbxl / "records500/00000/00001_hr")
    lr, _ = _rd(shared_ptbxl / "records100/00000/00001_lr")
    y, _ = preprocess(hr, fs_hr, "raw-100hz")
    assert _corr(y, lr) > 0.97
    np.testing.assert_allclose(y.std(axis=1), lr.std(axis=1), rtol=0.1)


def test_resampling_keeps_frequency_and_rational_rates():
    t = np.arange(0, 10, 1 / 360.0)  # MIT-BIH's 360 Hz: ratio 5/18
    x = np.tile(np.sin(2 * np.pi * 5.0 * t), (12, 1))
    y, _ = preprocess(x, 360.0, "raw-100hz")
    ref = np.sin(2 * np.pi * 5.0 * np.arange(1000) / 100.0)
    assert y.shape == (12, 1000)
    assert np.abs(y[0, 50:-50] - ref[50:-50]).max() < 0.02


def test_bandpass_removes_baseline_wander_and_high_frequency_noise():
    fs = 500.0
    t = np.arange(0, 10, 1 / fs)
    clean = np.sin(2 * np.pi * 8.0 * t)
    noisy = clean + 2.0 * np.sin(2 * np.pi * 0.1 * t) + 0.5 * np.sin(2 * np.pi * 180.0 * t)
    x = np.tile(noisy, (12, 1))
    y, _ = preprocess(x, fs, "etp-500hz")
    raw, _ = preprocess(x, fs, "raw-500hz")
    assert _corr(y[0], clean) > 0.99
    assert _corr(raw[0], clean) < 0.5


def test_zero_phase_filter_does_not_shift_peaks():
    fs = 100.0
    x = np.zeros((12, 1000))
    x[:, 400] = 1.0  # a spike: a causal filter would move its peak later
    y, _ = preprocess(x, fs, "etp-100hz")
    assert int(np.argmax(y[0])) == 400


def test_center_crop_of_long_record_is_exact_without_filtering():
    x = np.tile(np.arange(12_500, dtype=np.float32), (12, 1)) * 1e-3  # 25 s ramp at 500 Hz
    y, flags = preprocess(x, 500.0, "raw-500hz")
    start = (12_500 - 5_000) // 2
    np.testing.assert_array_equal(y, x[:, start:start + 5000])
    assert flags["cropped"] and not flags["padded"]


def test_short_record_is_zero_padded_at_the_end(shared_cpsc):
    x, fs = _rd(shared_cpsc / "cinc2020/A0001")  # 15 s; take its first 6 s like CPSC's shortest
    x = x[:, : int(6 * fs)]
    for name in ("etp-500hz", "raw-500hz", "etp-100hz"):
        p = get_preset(name)
        y, flags = preprocess(x, fs, name)
        n = int(6 * p.fs)
        assert flags["padded"] and not flags["cropped"]
        assert np.all(y[:, n:] == 0.0)
        assert np.all(np.abs(y[:, :n]).max(axis=1) > 0)
        if p.normalize:  # statistics over the real 6 s only, not diluted by the padding
            np.testing.assert_allclose(y[:, :n].std(axis=1), 1, atol=1e-3)


def test_nan_sparse_interpolated_dense_zeroed_flat_zeroed(shared_ptbxl):
    x, fs = _rd(shared_ptbxl / "records100/00000/00002_lr")
    x = x.astype(np.float64)
    x[1, 300:310] = np.nan      # II: 1 % missing -> interpolated
    x[2, ::2] = np.nan          # III: 50 % missing -> zero, flagged
    x[3] = 0.25                 # aVR: constant -> flat, zero, flagged
    x[4, :] = np.nan            # aVL: all NaN
    y, flags = preprocess(x, fs, "etp-100hz")
    assert np.isfinite(y).all()
    assert flags["interpolated_leads"] == ["II"]
    assert flags["nan_leads"] == ["III", "aVL"]
    assert flags["flat_leads"] == ["aVR"]
    for lead in ("III", "aVR", "aVL"):
        assert np.all(y[STANDARD_LEADS.index(lead)] == 0.0)
    clean, _ = preprocess(_rd(shared_ptbxl / "records100/00000/00002_lr")[0], fs, "etp-100hz")
    assert _corr(y[1], clean[1]) > 0.99
    np.testing.assert_array_equal(y[6:], clean[6:])  # untouched leads are unaffected


def test_bad_input_is_a_user_error():
    with pytest.raises(EtpError, match="transpose"):
        preprocess(np.zeros((1000, 12)), 100.0)
    with pytest.raises(EtpError, match="sampling rate"):
        preprocess(np.zeros((12, 1000)), 0)


# --- issue 11 item 9: numbers a damaged header or a caller can pass ---------------------------

@pytest.mark.parametrize("fs", [0.01, 0.001, 1e9, float("inf"), float("nan"), 49.0, 10_001.0, "abc", None])
def test_rates_outside_the_ecg_range_are_refused_before_resampling(fs):
    # 0.01 Hz -> 100 Hz is a 10,000-fold resampling: a 24 KB file allocated 4-9 GB; 1e9 crashed scipy.
    from etp_search.preprocess import RejectedSignal
    from etp_search.readers import SkipRecord

    with pytest.raises(RejectedSignal) as err:
        preprocess(np.zeros((12, 1000), np.float32), fs, "etp-100hz")
    assert err.value.reason == "sampling rate out of range" and "50-10000 Hz" in str(err.value)
    # a counted skip inside a pipeline, one error line for a user of the API or the CLI
    assert isinstance(err.value, SkipRecord) and isinstance(err.value, EtpError)


@pytest.mark.parametrize("samples, reason", [(0, "empty signal"), (1, "signal too short"), (99, "signal too short")])
def test_empty_and_sub_second_signals_are_refused(samples, reason):
    from etp_search.preprocess import RejectedSignal

    with pytest.raises(RejectedSignal) as err:  # a 0-sample record was embedded as zeros, flagged only "padded"
        preprocess(np.ones((12, samples)), 100.0, "etp-100hz")
    assert err.value.reason == reason
    y, flags = preprocess(np.random.default_rng(0).normal(size=(12, 100)), 100.0, "etp-100hz")  # 1 s is kept
    assert flags["padded"] and np.isfinite(y).all()


@pytest.mark.parametrize("bad", [np.full((12, 1000), 1.0 + 1j), np.full((12, 1000), "x"), [[1.0, 2.0], [3.0]]])
def test_complex_text_or_ragged_signals_are_refused(bad):
    from etp_search.preprocess import RejectedSignal

    with pytest.raises(RejectedSignal):
        preprocess(bad, 100.0, "raw-100hz")


def test_output_that_overflows_float32_is_refused_not_passed_on_as_inf():
    from etp_search.preprocess import RejectedSignal

    with pytest.raises(RejectedSignal, match="non-finite"):
        preprocess(np.full((12, 5000), 1e300), 500.0, "raw-500hz")


def test_long_record_costs_memory_of_the_window_not_of_the_record():
    import tracemalloc

    fs, minutes = 500.0, 30
    t = np.arange(int(minutes * 60 * fs)) / fs
    x = np.tile((np.sin(2 * np.pi * 8.0 * t) + 2.0 * np.sin(2 * np.pi * 0.1 * t)).astype(np.float32), (12, 1))
    tracemalloc.start()
    y, flags = preprocess(x, fs, "etp-100hz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # The record is 43 MB of float32; the whole-record path needed several float64 copies of it.
    assert peak < x.nbytes / 2, peak
    assert flags["cropped"] and flags["orig_seconds"] == minutes * 60 and y.shape == (12, 1000)
    mid = (len(t) - 5000) // 2  # the kept window is the centre 10 s, cleaned of its 0.1 Hz wander
    assert _corr(y[0], np.sin(2 * np.pi * 8.0 * t[mid:mid + 5000:5])) > 0.99
    raw, _ = preprocess(x, fs, "raw-500hz")  # without resampling or filtering: the exact centre crop
    np.testing.assert_array_equal(raw, x[:, mid:mid + 5000])


@pytest.mark.parametrize("field, value", [("fs", 1e10), ("fs", -5), ("seconds", float("nan")), ("seconds", 1e9),
                                          ("bandpass", [45.0, 0.5]), ("bandpass", "x"), ("filter_order", 0)])
def test_damaged_preset_json_is_one_line(field, value):
    with pytest.raises(EtpError) as err:
        Preset.from_dict({**PRESETS["etp-100hz"].to_dict(), field: value})
    assert "\n" not in str(err.value) and field in str(err.value)

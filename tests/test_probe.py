"""Linear probe: sklearn equivalence, coverage of the subsample, and test-fold isolation."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from etp_search.errors import DataError
from etp_search.evaluation.probe import ProbeConfig, fit_path, run_probe, stratified_subsample
from etp_search.labels import get_task

FAST = ProbeConfig(lambdas=(1e-1, 1e-2, 1e-3), max_iter=100)


def _planted(n=1500, d=32, c=4, seed=0, strength=0.6):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < np.linspace(0.05, 0.4, c)).astype(np.float32)
    X = rng.normal(size=(n, d)) + strength * Y @ rng.normal(size=(c, d))
    folds = rng.integers(1, 11, n)
    return X.astype(np.float32), Y, folds


def _ptbxl_labels(root, task_name, n=None):
    df = pd.read_csv(root / "ptbxl_database.csv", usecols=["scp_codes", "strat_fold"])
    if n is not None:
        df = df.iloc[:n]
    task = get_task(task_name)
    codes = [ast.literal_eval(s) for s in df["scp_codes"]]
    keep = np.array([task.has_labels(c) for c in codes])
    return task, task.matrix([c for c, k in zip(codes, keep) if k]), df["strat_fold"].to_numpy()[keep]


def test_fit_path_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    X, Y, _ = _planted(n=600, d=8, c=3)
    lam = 1e-2
    W, b = fit_path(X, Y, ProbeConfig(lambdas=(lam,), max_iter=500, tol_grad=1e-7))[0]
    for c in range(3):
        ref = LogisticRegression(C=1 / (lam * len(X)), tol=1e-10, max_iter=5000).fit(X, Y[:, c])
        np.testing.assert_allclose(W[:, c], ref.coef_[0], atol=2e-3)
        assert b[c] == pytest.approx(ref.intercept_[0], abs=2e-3)


def test_subsample_keeps_every_class_and_is_seeded():
    rng = np.random.default_rng(0)
    Y = (rng.random((5000, 12)) < np.r_[[0.0004, 0.001], np.full(10, 0.2)]).astype(np.float32)
    present = (Y > 0).any(axis=0)
    for seed in range(3):
        idx = stratified_subsample(Y, 0.01, seed)
        assert len(np.unique(idx)) == len(idx) and 50 <= len(idx) <= 53
        assert ((Y[idx] > 0).any(axis=0) == present).all()
        np.testing.assert_array_equal(idx, stratified_subsample(Y, 0.01, seed))
    assert not np.array_equal(stratified_subsample(Y, 0.01, 0), stratified_subsample(Y, 0.01, 1))
    np.testing.assert_array_equal(stratified_subsample(Y, 1.0, 0), np.arange(5000))


def test_planted_signal_scores_high_and_noise_near_chance():
    X, Y, folds = _planted()
    res = run_probe(X, Y, folds, fractions=(10, 100), seeds=2, config=FAST)
    assert res.rows[-1]["auc_mean"] > 0.9
    rng = np.random.default_rng(5)
    noise = run_probe(rng.normal(size=X.shape).astype(np.float32), Y, folds, fractions=(100,), seeds=1, config=FAST)
    assert abs(noise.rows[0]["auc_mean"] - 0.5) < 0.08
    assert res.rows[0]["n_train"][0] < res.rows[1]["n_train"][0]


def _assert_same_fits(a, b):
    assert a.probes.keys() == b.probes.keys()
    for key in a.probes:
        assert a.probes[key].lam == b.probes[key].lam
        np.testing.assert_array_equal(a.probes[key].weight, b.probes[key].weight)
        np.testing.assert_array_equal(a.probes[key].bias, b.probes[key].bias)


def test_fold10_labels_cannot_change_the_fitted_probes():
    X, Y, folds = _planted(seed=3)
    clean = run_probe(X, Y, folds, fractions=(10, 100), seeds=2, config=FAST)
    for poison in ("nan", "shuffle", "flip"):
        Yp = Y.copy()
        test = folds == 10
        if poison == "nan":
            Yp[test] = np.nan
        elif poison == "shuffle":
            Yp[test] = np.random.default_rng(1).permutation(Yp[test])
        else:
            Yp[test] = 1 - Yp[test]
        dirty = run_probe(X, Yp, folds, fractions=(10, 100), seeds=2, config=FAST)
        _assert_same_fits(clean, dirty)
        if poison == "flip":  # the test labels do reach the final score
            assert dirty.rows[-1]["auc_mean"] == pytest.approx(1 - clean.rows[-1]["auc_mean"])


def test_class_absent_from_test_fold_is_reported():
    X, Y, folds = _planted(seed=4)
    Y[folds == 10, 2] = 0
    Y[:, 3] = 0  # absent everywhere: untrainable and skipped
    res = run_probe(X, Y, folds, fractions=(100,), seeds=1, classes=list("abcd"), config=FAST)
    assert res.skipped == ["c", "d"] and res.untrainable == ["d"]
    assert np.isnan(res.per_class[100]["c"]) and not np.isnan(res.rows[0]["auc_mean"])


def test_probe_without_folds_says_it_needs_them():
    X, Y, _ = _planted(n=50)
    with pytest.raises(DataError, match="strat_fold"):
        run_probe(X, Y, np.full(50, -1))


def test_example_ptbxl_has_no_training_folds_and_says_so(example_ptbxl):
    # the shipped 50 records are all from folds 9-10: a probe must refuse in one line, not crash
    task, Y, folds = _ptbxl_labels(example_ptbxl, "superdiagnostic")
    X = np.random.default_rng(0).normal(size=(len(Y), 16)).astype(np.float32)
    with pytest.raises(DataError, match="training fold has no records"):
        run_probe(X, Y, folds, classes=task.classes, config=FAST)


def test_shared_ptbxl_poisoned_test_labels(shared_ptbxl):
    task, Y, folds = _ptbxl_labels(shared_ptbxl, "superdiagnostic", n=4000)
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(len(Y), 32)) + 0.5 * Y @ rng.normal(size=(Y.shape[1], 32))).astype(np.float32)
    clean = run_probe(X, Y, folds, fractions=(1, 100), seeds=2, classes=task.classes, config=FAST)
    Yp = Y.copy()
    Yp[folds == 10] = np.nan
    _assert_same_fits(clean, run_probe(X, Yp, folds, fractions=(1, 100), seeds=2, classes=task.classes, config=FAST))
    assert clean.rows[-1]["auc_mean"] > 0.75
    # 1 % of ~2,900 training records still holds every superclass
    assert all(p.n_train >= 5 for p in clean.probes.values())


def _norm_planted(n=1500, d=16, seed=7):
    """One label carried by the vectors' length alone: the unit vectors hold no trace of it."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 1)) < 0.3).astype(np.float32)
    direction = rng.normal(size=(n, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    # the first coordinate is kept positive so that a larger norm is linearly visible in it
    direction[:, 0] = np.abs(direction[:, 0]) + 0.5
    projection = direction * (1.0 + 2.0 * Y + 0.3 * rng.random((n, 1)))
    unit = projection / np.linalg.norm(projection, axis=1, keepdims=True)
    return {"unit": unit.astype(np.float32), "projection": projection.astype(np.float32)}, Y, rng.integers(1, 11, n)


def test_feature_sets_are_chosen_on_validation_and_never_on_test_labels():
    feats, Y, folds = _norm_planted()
    unit_only = run_probe(feats["unit"], Y, folds, fractions=(100,), seeds=1, config=FAST)
    assert abs(unit_only.rows[0]["auc_mean"] - 0.5) < 0.1 and unit_only.candidates == ["unit"]
    res = run_probe(feats, Y, folds, fractions=(50, 100), seeds=2, config=FAST)
    assert res.candidates == ["unit", "projection"]
    assert all(p.features == "projection" for p in res.probes.values())
    assert res.rows[-1]["features"] == ["projection", "projection"] and res.rows[-1]["auc_mean"] > 0.95
    # the choice reads fold 9 only: poisoned fold-10 labels change neither it nor the fits
    Yp = Y.copy()
    Yp[folds == 10] = 1 - Yp[folds == 10]
    dirty = run_probe(feats, Yp, folds, fractions=(50, 100), seeds=2, config=FAST)
    _assert_same_fits(res, dirty)
    assert [p.features for p in dirty.probes.values()] == [p.features for p in res.probes.values()]
    # and where the unit vectors are the better features, they are chosen (the order of the sets is not the rule)
    X, Yc, fc = _planted(n=1500, d=16, c=2, seed=9)
    noisy = np.random.default_rng(2).normal(size=X.shape).astype(np.float32)
    both = run_probe({"projection": noisy, "unit": X}, Yc, fc, fractions=(100,), seeds=1, config=FAST)
    assert both.probes[(100, 0)].features == "unit" and both.rows[0]["auc_mean"] > 0.9

"""Metrics against sklearn (an independent implementation) and brute-force counts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from etp_search.evaluation import metrics


@pytest.fixture()
def planted():
    rng = np.random.default_rng(0)
    Y = (rng.random((400, 6)) < 0.2).astype(np.float32)
    S = rng.normal(size=Y.shape) + 1.5 * Y
    S[:, 2] = np.round(S[:, 2])  # heavy ties
    return Y, S


def test_roc_auc_equals_sklearn_with_ties(planted):
    Y, S = planted
    for c in range(Y.shape[1]):
        assert metrics.roc_auc(Y[:, c], S[:, c]) == pytest.approx(roc_auc_score(Y[:, c], S[:, c]), abs=1e-12)


def test_macro_auc_skips_classes_without_both_kinds(planted):
    Y, S = planted
    Y = Y.copy()
    Y[:, 1] = 0  # no positives
    Y[:, 4] = 1  # no negatives
    macro, per_class, skipped = metrics.macro_auc(Y, S)
    assert skipped.tolist() == [1, 4]
    assert np.isnan(per_class[[1, 4]]).all()
    expected = np.mean([roc_auc_score(Y[:, c], S[:, c]) for c in (0, 2, 3, 5)])
    assert macro == pytest.approx(expected, abs=1e-12)


def test_macro_auc_all_skipped_is_nan():
    macro, _, skipped = metrics.macro_auc(np.zeros((5, 2)), np.ones((5, 2)))
    assert np.isnan(macro) and skipped.tolist() == [0, 1]


def test_weighted_auc_equals_auc_of_explicit_resample(planted):
    Y, S = planted
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(Y), len(Y))
    counts = np.bincount(idx, minlength=len(Y))[None].astype(np.float64)
    for c in range(Y.shape[1]):
        got = metrics._weighted_auc(Y[:, c] > 0, S[:, c], counts)[0]
        assert got == pytest.approx(roc_auc_score(Y[idx, c], S[idx, c]), abs=1e-9)


def test_bootstrap_ci_contains_point_and_is_seeded(planted):
    Y, S = planted
    macro, _, _ = metrics.macro_auc(Y, S)
    low, high = metrics.bootstrap_ci(Y, S, n_boot=300, seed=1)
    assert low < macro < high
    assert high - low < 0.2
    assert (low, high) == metrics.bootstrap_ci(Y, S, n_boot=300, seed=1)
    assert (low, high) != metrics.bootstrap_ci(Y, S, n_boot=300, seed=2)


def test_precision_at_k_equals_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 50))
    relevant = rng.random((30, 50)) < 0.3
    for k in (1, 5, 10):
        brute = np.mean([relevant[q, np.argsort(-scores[q])[:k]].sum() / k for q in range(30)])
        assert metrics.precision_at_k(scores, relevant, k) == pytest.approx(brute)


def test_auc_report_names_skipped_classes(planted):
    Y, S = planted
    Y = Y.copy()
    Y[:, 0] = 0
    report = metrics.auc_report(Y, S, list("abcdef"), n_boot=50)
    assert report.skipped == ["a"]
    assert np.isnan(report.per_class["a"]) and not np.isnan(report.per_class["b"])
    assert report.to_dict()["ci95"][0] <= report.macro_auc <= report.to_dict()["ci95"][1]

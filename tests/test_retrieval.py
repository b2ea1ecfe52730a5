"""Recall@k against brute-force counts, with duplicate report texts."""

from __future__ import annotations

import numpy as np
import pytest

from etp_search.evaluation.retrieval import evaluate_retrieval, recall_at_k


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(q, t, qt, tt, k):
    hits = 0
    for i in range(len(q)):
        top = np.argsort(-(t @ q[i]))[:k]
        hits += any(tt[j] == qt[i] for j in top)
    return hits / len(q)


@pytest.mark.parametrize("chunk", [7, 1024])
def test_recall_at_k_equals_brute_force(chunk):
    rng = np.random.default_rng(0)
    q, t = _unit(rng.normal(size=(60, 16))), _unit(rng.normal(size=(90, 16)))
    words = ["norm", "afib", "lbbb", "mi", "stach"]
    qt = [words[i] for i in rng.integers(0, 5, 60)]
    tt = [words[i] for i in rng.integers(0, 5, 90)]
    got = recall_at_k(q, t, qt, tt, ks=(1, 5, 10, 200), chunk=chunk)
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(_brute(q, t, qt, tt, k))
    assert got[200] == 1.0  # k past the gallery: every text that exists among targets is found


def test_perfect_pairing_gives_recall_one_and_dedups_queries():
    rng = np.random.default_rng(1)
    base = _unit(rng.normal(size=(5, 32)))
    texts = ["a", "b", "c", "d", "e"] * 4  # each report 4 times
    ecg = _unit(base[[i % 5 for i in range(20)]] + 0.01 * rng.normal(size=(20, 32)))
    txt = base[[i % 5 for i in range(20)]]
    res = evaluate_retrieval(ecg, txt, texts, ks=(1, 5))
    assert res["n_records"] == 20 and res["n_unique_reports"] == 5
    assert res["ecg_to_report"][1] == 1.0 and res["report_to_ecg"][1] == 1.0


def test_random_vectors_give_chance_recall():
    rng = np.random.default_rng(2)
    n = 400
    texts = [f"report {i}" for i in range(n)]
    res = evaluate_retrieval(_unit(rng.normal(size=(n, 64))), _unit(rng.normal(size=(n, 64))), texts, ks=(10,))
    assert res["ecg_to_report"][10] < 0.08 and res["report_to_ecg"][10] < 0.08


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        recall_at_k(np.ones((2, 3)), np.ones((3, 3)), ["a"], ["a", "b", "c"])

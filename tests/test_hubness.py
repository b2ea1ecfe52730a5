"""etp_search.evaluation.hubness: k-occurrence, skewness, centring, CSLS -- values checked on constructed vectors."""

from __future__ import annotations

import numpy as np
import pytest

from etp_search.evaluation.hubness import (centre, corpus_mean, csls, csls_penalty, hubness_report, k_occurrence, normalise,
                              similarity, skewness)


def _hub_corpus(n: int = 40, d: int = 16, seed: int = 0):
    """30 queries and n corpus vectors scattered around a shared direction u; corpus item 0 is u itself (a hub)."""
    rng = np.random.default_rng(seed)
    u = np.zeros(d)
    u[-1] = 1.0
    queries = normalise(0.3 * rng.normal(size=(30, d)) / np.sqrt(d) + u)
    corpus = normalise(rng.normal(size=(n, d)) / np.sqrt(d) + u)
    corpus[0] = u
    return queries, corpus


def test_k_occurrence_counts_from_scores():
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.1, 0.0]])
    assert k_occurrence(s, 1).tolist() == [2, 1, 0]
    assert k_occurrence(s, 2).tolist() == [2, 2, 2]
    assert k_occurrence(s.T, 1).tolist() == [1, 2, 0]
    assert k_occurrence(s, 2).sum() == 3 * 2


def test_k_occurrence_leave_one_out_ignores_self():
    x = normalise(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    s = x @ x.T
    # with itself excluded: 0 -> 1, 1 -> 0, 2 -> 1
    assert k_occurrence(s, 1, exclude_self=True).tolist() == [1, 2, 0]
    assert k_occurrence(s, 1).tolist() == [1, 1, 1]  # self-match counted without exclusion


def test_constructed_hub_is_in_every_top_k_and_centring_removes_it():
    q, c = _hub_corpus()
    nk = k_occurrence(q, 5, corpus=c)
    assert nk[0] == len(q)  # in every query's top 5
    assert nk.sum() == len(q) * 5
    rep = hubness_report(nk, 5, len(q))
    assert rep["max"] == len(q) and rep["top"][0] == {"index": 0, "n_k": len(q)}
    assert rep["skewness"] > 1.0
    # leave-one-out in the corpus: the hub is most items' neighbour; centring takes it out of the top lists
    nk_loo = k_occurrence(c @ c.T, 5, exclude_self=True)
    assert nk_loo[0] >= 0.7 * (len(c) - 1)
    cc = centre(c)
    nk_c = k_occurrence(cc @ cc.T, 5, exclude_self=True)
    assert nk_c[0] <= 6
    assert skewness(nk_c) < 0.5 < 2.0 < skewness(nk_loo)


def test_centre_has_zero_mean_direction_and_unit_rows():
    _, c = _hub_corpus()
    x = centre(c)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    before = np.linalg.norm(corpus_mean(c))
    assert before > 0.5 and np.linalg.norm(normalise(c).mean(0) - corpus_mean(c)) < 1e-6
    assert np.linalg.norm((normalise(c) - corpus_mean(c)).mean(0)) < 1e-5
    with pytest.raises(ValueError, match="dimension"):
        centre(c, np.zeros(3))


def test_skewness_values():
    assert skewness(np.ones(5)) == 0.0
    assert skewness(np.array([0, 0, 0, 0, 10])) == pytest.approx(1.5, abs=1e-12)  # (n-2)/sqrt(n-1) for n=5
    assert skewness(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.0, abs=1e-12)


def test_csls_penalises_the_hub():
    q, c = _hub_corpus()
    r = csls_penalty(q, c, k=5)
    assert int(np.argmax(r)) == 0
    s = similarity(q, c)
    np.testing.assert_allclose(csls(s, r), 2 * s - r[None, :], rtol=1e-6)
    # leave-one-out in the corpus: CSLS halves the hub's k-occurrence (34 -> 15 of 39 here)
    ss = c @ c.T
    r_loo = csls_penalty(c, c, k=5, exclude_self=True)
    assert int(np.argmax(r_loo)) == 0
    before = k_occurrence(ss, 5, exclude_self=True)[0]
    after = k_occurrence(csls(ss, r_loo), 5, exclude_self=True)[0]
    assert before >= 30 and after <= before // 2
    # for one query a corpus-side constant does not reorder; the penalty does
    with pytest.raises(ValueError, match="penalty"):
        csls(s, r[:-1])


def test_bad_k_and_shapes_are_named():
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match="k=4"):
        k_occurrence(s, 4)
    with pytest.raises(ValueError, match="square"):
        k_occurrence(s, 1, exclude_self=True)
    with pytest.raises(ValueError, match="k=3"):
        k_occurrence(np.zeros((3, 3)), 3, exclude_self=True)

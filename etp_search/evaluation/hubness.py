"""Hubness of an embedding corpus: how often each item is among someone's k nearest, and corrections.

A *hub* is a corpus vector that ranks high for many unrelated queries (in ECG-text spaces, e.g. a
paced ECG that is in the top 10 of most text queries). Measured by the k-occurrence ``N_k(x)``: the
number of queries whose top-k contains ``x`` (Radovanovic et al. 2010); a right-skewed ``N_k``
distribution (large positive skewness, a long tail of large ``N_k`` and many items with ``N_k = 0``)
means hubs. Two corrections are offered:

- **centring**: subtract the corpus mean vector and renormalise (removes the shared direction that
  makes some vectors close to everything);
- **CSLS** (cross-domain similarity local scaling, Conneau et al. 2018): ``2 cos(q, x) - r(x)`` with
  ``r(x)`` the mean similarity of ``x`` to its k nearest queries of a reference query set; for a
  fixed query the query-side term is a constant and does not change the ranking.

An evaluation measure over query results, not part of the store: numpy only (it lives in
``etp_search.evaluation`` beside the other measures; ``indexing/`` search stays plain cosine).
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalise", "similarity", "k_occurrence", "skewness", "hubness_report", "corpus_mean", "centre",
           "csls_penalty", "csls"]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (float32; all-zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def similarity(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """(Q, N) cosine similarity of each query row to each corpus row."""
    return normalise(queries) @ normalise(corpus).T


def _top_k(scores: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    s = np.array(scores, np.float64, copy=True)
    if s.ndim != 2:
        raise ValueError(f"scores must be (queries, corpus), got shape {s.shape}")
    if exclude_self:
        if s.shape[0] != s.shape[1]:
            raise ValueError(f"exclude_self needs a square (corpus x corpus) score matrix, got {s.shape}")
        np.fill_diagonal(s, -np.inf)
    n = s.shape[1] - (1 if exclude_self else 0)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in 1..{n} (the corpus size{' less the query itself' if exclude_self else ''})")
    # ties broken by index (stable), so results are reproducible
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def k_occurrence(scores_or_vectors: np.ndarray, k: int = 10, corpus: np.ndarray | None = None,
                 exclude_self: bool = False) -> np.ndarray:
    """N_k of each corpus item: how many queries have it in their top k.

    Args:
        scores_or_vectors: a (Q, N) score matrix (higher = closer) when ``corpus`` is None, else (Q, D)
            query vectors scored against ``corpus`` by cosine.
        k: neighbourhood size.
        corpus: (N, D) corpus vectors, or None when a score matrix is given.
        exclude_self: leave-one-out, for a corpus queried with itself (square scores; the diagonal is
            never a neighbour).

    Returns:
        (N,) int64 counts; they sum to Q * k.
    """
    s = scores_or_vectors if corpus is None else similarity(scores_or_vectors, corpus)
    top = _top_k(s, k, exclude_self)
    return np.bincount(top.ravel(), minlength=np.shape(s)[1]).astype(np.int64)


def skewness(x: np.ndarray) -> float:
    """Sample skewness E[(x - mean)^3] / std^3 (population moments; 0 for a constant array)."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        raise ValueError("skewness of an empty array")
    d = x - x.mean()
    sd = np.sqrt(np.mean(d ** 2))
    return 0.0 if sd == 0 else float(np.mean(d ** 3) / sd ** 3)


def hubness_report(n_k: np.ndarray, k: int, n_queries: int, top: int = 10) -> dict:
    """Summary of a k-occurrence vector: skewness, max, share never in a top k, share of hubs, top items.

    A hub here is an item with ``N_k > 2 * mean(N_k)`` (a common threshold); ``top`` lists the indices of
    the largest ``N_k`` (ties by index).
    """
    n_k = np.asarray(n_k, np.int64)
    mean = n_queries * k / len(n_k)
    order = np.argsort(-n_k, kind="stable")[:top]
    return {"k": int(k), "n_queries": int(n_queries), "n_corpus": int(len(n_k)), "mean": float(mean),
            "skewness": skewness(n_k), "max": int(n_k.max()), "max_share_of_queries": float(n_k.max() / n_queries),
            "share_zero": float(np.mean(n_k == 0)), "share_hubs": float(np.mean(n_k > 2 * mean)),
            "top_share_of_slots": float(np.sort(n_k)[::-1][:max(1, len(n_k) // 100)].sum() / (n_queries * k)),
            "top": [{"index": int(i), "n_k": int(n_k[i])} for i in order]}


def corpus_mean(vectors: np.ndarray) -> np.ndarray:
    """(D,) mean of the L2-normalised corpus vectors (the vector to store with an index for centring)."""
    v = normalise(vectors)
    if len(v) == 0:
        raise ValueError("mean of an empty corpus")
    return v.mean(axis=0).astype(np.float32)


def centre(vectors: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Normalised vectors minus ``mean`` (default: their own corpus mean), renormalised."""
    v = normalise(vectors)
    m = corpus_mean(v) if mean is None else np.asarray(mean, np.float32)
    if m.shape != v.shape[1:]:
        raise ValueError(f"mean has shape {m.shape}, vectors have dimension {v.shape[1:]}")
    return normalise(v - m)


def csls_penalty(reference_queries: np.ndarray, corpus: np.ndarray, k: int = 10, exclude_self: bool = False) -> np.ndarray:
    """r(x): mean cosine of each corpus vector to its k most similar reference queries (N,)."""
    s = similarity(reference_queries, corpus).T.astype(np.float64)  # (N, Q)
    if exclude_self:
        if s.shape[0] != s.shape[1]:
            raise ValueError("exclude_self needs the corpus as its own reference set")
        np.fill_diagonal(s, -np.inf)
    q = s.shape[1] - (1 if exclude_self else 0)
    if not 1 <= k <= q:
        raise ValueError(f"k={k} must be in 1..{q} (the reference queries)")
    part = -np.partition(-s, k - 1, axis=1)[:, :k]
    return part.mean(axis=1).astype(np.float32)


def csls(scores: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """CSLS-scaled scores ``2 * scores - penalty`` (penalty broadcast over the corpus axis, last)."""
    s = np.asarray(scores, np.float32)
    p = np.asarray(penalty, np.float32)
    if p.shape != s.shape[-1:]:
        raise ValueError(f"penalty has shape {p.shape}, scores have {s.shape[-1]} corpus items")
    return 2 * s - p

"""Recall of an index against exact search: recall@10 on held-out rows, nprobe tuned to a target.

- ``exact_knn``: exact top-k by inner product, streamed over the data in chunks.
- ``recall_at_k`` (10-recall@10; rows tied with a true neighbour by exact score count as found, so
  an index over duplicated vectors, e.g. reports shared by many records, is not under-rated),
  ``tune_nprobe`` (the smallest nprobe reaching a target),
  ``held_out_recall`` (queries are rows of the indexed data, each one's own hit dropped), which every
  build records (``indexing.build.finish_build``), and ``measure_recall`` for an index at hand.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from indexing.errors import IndexingError
from indexing.faiss_index import DEFAULT_CHUNK_ROWS, Rows, _ivf_attr, _search_once, _set_nprobe, iter_chunks, normalized
from indexing.gpu import faiss

logger = logging.getLogger(__name__)

#: recall@10 that nprobe tuning aims for.
DEFAULT_TARGET_RECALL = 0.95
#: Held-out queries used to measure recall at build time.
DEFAULT_RECALL_QUERIES = 500
#: Scores within this of the last true neighbour's count as ties (float32 cosines differ by ~1e-7).
SCORE_TOL = 1e-5


def exact_knn(data: Rows, queries: np.ndarray, k: int = 10,
              chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product neighbours of ``queries`` over ``data``, streamed by chunks."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for a, block in iter_chunks(data, chunk_rows):
        d = q @ block.T
        kk = min(k, d.shape[1])
        part = np.argpartition(-d, kk - 1, axis=1)[:, :kk]
        heap.add_result(np.take_along_axis(d, part, 1).astype(np.float32), (part + a).astype(np.int64))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10, *, found_scores: np.ndarray | None = None,
                truth_scores: np.ndarray | None = None, tol: float = SCORE_TOL) -> float:
    """Mean |found[:k] & truth[:k]| over the true neighbours (recall@k in the 10-recall@10 sense;
    -1 padding is never a hit and, in ``truth``, not a neighbour).

    With ``found_scores`` and ``truth_scores`` (exact scores of the found rows and of the true
    neighbours, best first) a found row also counts when it scores at least the last true
    neighbour's score minus ``tol``: a row tied with a neighbour (the same vector stored for many
    records, as one report is for all records that share it) is as good an answer, and counting
    ids alone would call it a miss (the distance recall of ann-benchmarks).
    """
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    n_true = int((truth >= 0).sum())
    if found_scores is None or truth_scores is None:
        hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
        return hits / max(1, n_true)
    hits = 0
    for f, fs, t, ts in zip(found, np.asarray(found_scores)[:, :k], truth, np.asarray(truth_scores)[:, :k]):
        nt = int((t >= 0).sum())
        if nt:
            hits += min(nt, int(((f >= 0) & (fs >= ts[nt - 1] - tol)).sum()))
    return hits / max(1, n_true)


class _Rescorer:
    """Exact scores of found rows against the queries; each row is read from ``data`` once."""

    def __init__(self, data: Rows, queries: np.ndarray) -> None:
        self.data, self.q = data, queries
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        for r in np.unique(ids[ids >= 0]).tolist():
            if r not in self.rows:
                self.rows[r] = np.asarray(self.data[r:r + 1], np.float32)[0]
        out = np.full(ids.shape, -np.inf, np.float32)
        for i, j in zip(*np.nonzero(ids >= 0)):
            out[i, j] = self.q[i] @ self.rows[int(ids[i, j])]
        return out


def tune_nprobe(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float = DEFAULT_TARGET_RECALL,
                k: int = 10, *, self_rows: np.ndarray | None = None, nprobe: int | None = None,
                data: Rows | None = None, truth_scores: np.ndarray | None = None) -> tuple[int | None, float]:
    """The smallest nprobe (1, 2, 4, ..., nlist) whose recall@k on ``queries`` against ``truth``
    reaches ``target``, set on the index (GPU indexes too); returns (nprobe, recall).

    Stops early when doubling nprobe gains under 0.002 (the PQ quantisation bound) and keeps the
    best seen. ``nprobe`` measures that one value only. A non-IVF index is measured once and
    returns (None, recall). ``self_rows``: the queries are these rows of the indexed data, so
    each one's own hit is dropped from the results (``truth`` must have it dropped too).
    ``data`` (the indexed rows) and ``truth_scores``: recall counts ties by exact score
    (``recall_at_k``), the found rows re-scored exactly from ``data``.
    """
    rescore = _Rescorer(data, np.ascontiguousarray(queries, dtype=np.float32)) \
        if data is not None and truth_scores is not None else None
    nlist = _ivf_attr(index, "nlist")
    candidates: list[int | None] = [nprobe] if nprobe else list(_nprobe_ladder(nlist)) if nlist else [None]
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best: tuple[int | None, float] = (None, -1.0)
    for p in candidates:
        _, got = _search_once(index, q, k + (self_rows is not None), None, p)  # raw: -1 padding is a miss
        ids = got[:, :k] if self_rows is None else _drop_self(got, self_rows, k)[0]
        r = recall_at_k(ids, truth, k, found_scores=rescore(ids) if rescore else None, truth_scores=truth_scores)
        logger.debug("nprobe %s: recall@%d %.4f", p, k, r)
        gain = r - best[1]
        if r > best[1]:
            best = (p, r)
        if r >= target or (gain < 0.002 and p != candidates[0]):
            break  # reached the target, or more probes no longer help
    if best[0] is not None:
        _set_nprobe(index, best[0])
    return best


def held_out_recall(index: faiss.Index, data: Rows, *, nq: int = DEFAULT_RECALL_QUERIES, seed: int = 1,
                    target: float = DEFAULT_TARGET_RECALL, nprobe: int | None = None, k: int = 10,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
    """recall@k against exact search (streamed over ``data``, the index's rows) for ``nq`` rows of
    ``data`` drawn with ``seed``, each row's own hit dropped (it is always found first and would
    inflate recall by up to 0.1), with nprobe tuned to ``target`` by ``tune_nprobe``.

    Returns ``{"recall_at_10", "recall_queries", "recall_exact": False}`` and ``"nprobe"`` for IVF.
    """
    n = int(data.shape[0])
    kk = min(k, n - 1)
    if kk < 1:
        return {"recall_at_10": 1.0, "recall_queries": 0, "recall_exact": False}
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(nq, n), replace=False))
    xq = np.concatenate([np.asarray(data[int(r):int(r) + 1], np.float32) for r in rows])  # a few hundred small reads
    scores, ids = exact_knn(data, xq, kk + 1, chunk_rows)
    truth, truth_scores = _drop_self(ids, rows, kk, scores)
    chosen, recall = tune_nprobe(index, xq, truth, target, kk, self_rows=rows, nprobe=nprobe, data=data,
                                 truth_scores=truth_scores)
    out: dict[str, Any] = {"recall_at_10": round(float(recall), 4), "recall_queries": len(rows), "recall_exact": False}
    if chosen is not None:
        out["nprobe"] = int(chosen)
    return out


def _nprobe_ladder(nlist: int) -> list[int]:
    out, p = [], 1
    while p < nlist:
        out.append(p)
        p *= 2
    return out + [nlist]


def _drop_self(ids: np.ndarray, q_rows: np.ndarray, k: int,
               scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` results of each query without its own row (and their scores; -1 / -inf padded)."""
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    out_s = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    for i, (row, q) in enumerate(zip(ids, q_rows)):
        keep = np.flatnonzero((row != q) & (row >= 0))[:k]
        out[i, :len(keep)] = row[keep]
        if scores is not None:
            out_s[i, :len(keep)] = scores[i, keep]
    return out, out_s


def measure_recall(index: faiss.Index, vectors: np.ndarray, *, k: int = 10, nq: int = DEFAULT_RECALL_QUERIES,
                   seed: int = 1) -> float:
    """recall@k of ``index`` at its nprobe against exact search over ``vectors`` (rows = ids), self excluded."""
    x = normalized(vectors)
    if x.shape[1] != index.d or x.shape[0] != index.ntotal:
        raise IndexingError(f"measure_recall needs the index's own vectors: got {x.shape[0]} x {x.shape[1]}, "
                            f"the index holds {index.ntotal} x {index.d}")
    return float(held_out_recall(index, x, nq=nq, seed=seed, k=k, nprobe=_ivf_attr(index, "nprobe"))["recall_at_10"])

"""Measuring an index: exact search streamed by chunks, recall@k, the probe count for a target.

``exact_knn`` + ``recall_at_k`` measure recall@k against exact search on held-out queries;
``tune_nprobe`` picks the smallest probe count that reaches a target on a calibration set, and
``held_out_recall`` does the same on rows of the indexed data itself (each row's own hit dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from indexing.ann.build import DEFAULT_CHUNK_ROWS, ArrayLike, iter_chunks, set_search_params
from indexing.faiss_index import _drop_self, _ivf


def exact_knn(data: ArrayLike, queries: np.ndarray, k: int = 10,
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


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean |found[:k] & truth[:k]| / k over queries (recall@k in the 10-recall@10 sense)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / float(truth.size)


def tune_nprobe(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float = 0.95,
                k: int = 10, choices: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
                k_factor: float = 8) -> tuple[int, float]:
    """Smallest nprobe whose recall@k on these (calibration) queries reaches ``target``.

    Returns (nprobe, recall). A flat index returns (0, recall). When no choice reaches the target,
    the largest is returned with its recall.
    """
    ivf = _ivf(index)
    if ivf is None:
        _, found = index.search(np.ascontiguousarray(queries, np.float32), k)
        return 0, recall_at_k(found, truth, k)
    nlist = ivf.nlist
    best = (0, 0.0)
    for p in [c for c in choices if c <= nlist] or [nlist]:
        set_search_params(index, nprobe=p, k_factor=k_factor)
        _, found = index.search(np.ascontiguousarray(queries, np.float32), k)
        best = (p, recall_at_k(found, truth, k))
        if best[1] >= target:
            break
    set_search_params(index, nprobe=best[0], k_factor=k_factor)
    return best


def held_out_recall(index: faiss.Index, data: ArrayLike, *, queries: int = 200, k: int = 10, seed: int = 0,
                    target: float = 0.95, k_factor: float = 16,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
    """Recall@k against streamed exact search for ``queries`` sampled rows, each row's own hit dropped.

    Sets the smallest nprobe (1, 2, 4, ...) that reaches ``target`` on the index and returns
    ``{"nprobe", "recall_at_10", "recall_queries"}`` (nprobe absent for an exact index).
    """
    n = int(data.shape[0])
    kk = min(k, n - 1)
    if kk < 1:
        return {"recall_at_10": 1.0, "recall_queries": 0}
    rows = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(queries, n), replace=False))
    xq = np.concatenate([np.asarray(data[int(r):int(r) + 1], np.float32) for r in rows])
    truth = _drop_self(exact_knn(data, xq, kk + 1, chunk_rows)[1], rows, kk)
    ivf = _ivf(index)
    nlist = int(ivf.nlist) if ivf is not None else 0
    ladder = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p < nlist] + [nlist] if nlist else [0]
    best = (0, -1.0)
    for p in ladder:
        set_search_params(index, nprobe=p or None, k_factor=k_factor)
        r = recall_at_k(_drop_self(index.search(xq, kk + 1)[1], rows, kk), truth, kk)
        if r > best[1]:
            best = (p, r)
        if r >= target:
            break
    set_search_params(index, nprobe=best[0] or None, k_factor=k_factor)
    out: dict[str, Any] = {"recall_at_10": round(float(best[1]), 4), "recall_queries": len(rows)}
    if nlist:
        out["nprobe"] = int(best[0])
    return out

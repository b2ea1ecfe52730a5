"""Building a FAISS index over vectors, and measuring it: recall@10 against exact search, nprobe tuned.

- ``build_index``: exact ``IndexFlatIP`` by default; past ``ivf_threshold`` rows (or by an
  index-factory string) an IVF index trained on a seeded sample (``faiss_index.sample_rows``).
- ``finish_build`` (every builder's, ``indexing.ann`` included): ``held_out_recall``, recall@10
  against exact search on held-out rows of the indexed data, own hit dropped, with ``tune_nprobe``
  picking the smallest nprobe that reaches ``target_recall``; kept in ``info`` and the sidecar JSON.

The primitives it stands on (chunks, factories, search, GPU placement) are ``indexing.faiss_index``
and ``indexing.gpu``; this module is above them and below ``indexing.index_files`` and ``indexing.ann``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from indexing.errors import IndexingError
from indexing.faiss_index import (DEFAULT_CHUNK_ROWS, DEFAULT_IVF_THRESHOLD, DEFAULT_RECALL_QUERIES,
                                  DEFAULT_TARGET_RECALL, Rows, _faiss_reason, _ivf, _ivf_attr, _search_once,
                                  _set_nprobe, check_factory, choose_factory, iter_chunks, normalized, sample_rows)
from indexing.gpu import UseGpu, faiss, is_gpu_index, resolve_use_gpu, to_gpu

logger = logging.getLogger(__name__)


def build_index(vectors: np.ndarray, *, factory: str = "auto", ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
                nlist: int | None = None, nprobe: int | None = None, use_gpu: UseGpu = "auto",
                seed: int = 0, target_recall: float = DEFAULT_TARGET_RECALL,
                recall_queries: int = DEFAULT_RECALL_QUERIES, train_size: int | None = None) -> tuple[faiss.Index, dict]:
    """Build an inner-product index whose ids are the rows of ``vectors``.

    Args:
        vectors: (n, d) float32; normalised here if they are not unit-norm.
        factory: "auto" (Flat below ``ivf_threshold`` rows, else ``IVF{nlist},Flat``) or any
            faiss index-factory string, e.g. "IVF4096,PQ32x8" or "OPQ32,IVF4096,PQ32".
        ivf_threshold: rows from which "auto" builds IVF.
        nlist: IVF lists for "auto" (default ``faiss_index.default_nlist(n)``).
        nprobe: lists probed per query; None tunes it to reach ``target_recall``.
        use_gpu: "auto", True or False.
        seed: seeds the training sample, k-means and the recall queries.
        target_recall: recall@10 vs exact search that nprobe tuning aims for.
        recall_queries: held-out rows used as queries to measure recall.
        train_size: training sample size (default 64 points per list, >= 10k for PQ).

    Returns:
        (index, info): info holds factory, dim, n_rows, metric, nlist, nprobe, recall_at_10,
        build_seconds, on_gpu.
    """
    t0 = time.perf_counter()
    x = normalized(vectors)
    n, d = x.shape
    if n == 0:
        raise IndexingError("no vectors to index; embed some records first")
    spec = choose_factory(n, factory, ivf_threshold, nlist)
    on_gpu = resolve_use_gpu(use_gpu)
    check_factory(spec, d, n)
    cpu_index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = _ivf(cpu_index)
    info: dict[str, Any] = {"factory": spec, "factory_requested": factory, "seed": seed}
    if ivf is not None:
        ivf.cp.seed = seed
        info["nlist"] = int(ivf.nlist)
    index = cpu_index
    if on_gpu:
        index = to_gpu(cpu_index, keep_twin=False)  # cpu_index stays empty: a twin is made if a filter needs it
    if not cpu_index.is_trained:
        ntrain = min(n, train_size or max(64 * (ivf.nlist if ivf is not None else 256), 10_000))
        info["train_size"] = int(ntrain)
        t_train = time.perf_counter()
        try:
            index.train(sample_rows(x, ntrain, seed))
        except RuntimeError as e:  # whatever check_factory cannot foresee, still as one line
            raise IndexingError(f"faiss could not train {spec!r} on {ntrain} rows ({_faiss_reason(e)}); "
                                "use --factory auto, or fewer IVF lists / PQ codes") from None
        info["train_seconds"] = round(time.perf_counter() - t_train, 3)
    index.add(x)
    finish_build(index, x, info, t0, exact=ivf is None and spec == "Flat", nprobe=nprobe, target=target_recall,
                 nq=recall_queries)
    return index, info


def finish_build(index: faiss.Index, data: Rows, info: dict, t0: float, *, exact: bool,
                 nprobe: int | None = None, target: float = DEFAULT_TARGET_RECALL,
                 nq: int = DEFAULT_RECALL_QUERIES, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """What every builder records once the rows are in (``build_index`` here, ``indexing.ann``'s
    ``store_builder``), beside the ``factory``, ``factory_requested`` and ``seed`` it put in ``info``:
    dimension, metric, faiss version, row counts, GPU or not, recall@10 (1.0 when ``exact``, else
    measured by ``held_out_recall``, which also tunes nprobe), the build time; logged. Returns ``info``."""
    info.update(dim=int(index.d), metric="inner_product", normalized=True, faiss_version=faiss.__version__,
                n_rows=int(index.ntotal), n_rows_at_build=int(index.ntotal), on_gpu=is_gpu_index(index))
    if exact:
        info.update(recall_at_10=1.0, recall_exact=True)
    else:  # seed + 1: other rows than the training sample drawn with ``seed``
        info.update(held_out_recall(index, data, nq=nq, seed=int(info["seed"]) + 1, target=target, nprobe=nprobe,
                                    chunk_rows=chunk_rows))
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("built %s over %d x %d in %.1fs (recall@10 %.3f%s)", info["factory"], info["n_rows"], info["dim"],
                info["build_seconds"], info["recall_at_10"], f", nprobe {info['nprobe']}" if "nprobe" in info else "")
    return info


# ----------------------------------------------------------------------------- recall


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


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean |found[:k] & truth[:k]| over the true neighbours (recall@k in the 10-recall@10 sense;
    -1 padding is never a hit and, in ``truth``, not a neighbour)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


def tune_nprobe(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float = DEFAULT_TARGET_RECALL,
                k: int = 10, *, self_rows: np.ndarray | None = None,
                nprobe: int | None = None) -> tuple[int | None, float]:
    """The smallest nprobe (1, 2, 4, ..., nlist) whose recall@k on ``queries`` against ``truth``
    reaches ``target``, set on the index (GPU indexes too); returns (nprobe, recall).

    Stops early when doubling nprobe gains under 0.002 (the PQ quantisation bound) and keeps the
    best seen. ``nprobe`` measures that one value only. A non-IVF index is measured once and
    returns (None, recall). ``self_rows``: the queries are these rows of the indexed data, so
    each one's own hit is dropped from the results (``truth`` must have it dropped too).
    """
    nlist = _ivf_attr(index, "nlist")
    candidates: list[int | None] = [nprobe] if nprobe else list(_nprobe_ladder(nlist)) if nlist else [None]
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best: tuple[int | None, float] = (None, -1.0)
    for p in candidates:
        _, got = _search_once(index, q, k + (self_rows is not None), None, p)  # raw: -1 padding is a miss
        r = recall_at_k(got[:, :k] if self_rows is None else _drop_self(got, self_rows, k), truth, k)
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
    xq = np.concatenate([np.asarray(data[int(r):int(r) + 1], np.float32) for r in rows])
    truth = _drop_self(exact_knn(data, xq, kk + 1, chunk_rows)[1], rows, kk)
    chosen, recall = tune_nprobe(index, xq, truth, target, kk, self_rows=rows, nprobe=nprobe)
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


def _drop_self(ids: np.ndarray, q_rows: np.ndarray, k: int) -> np.ndarray:
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    for i, (row, q) in enumerate(zip(ids, q_rows)):
        kept = row[(row != q) & (row >= 0)][:k]
        out[i, :len(kept)] = kept
    return out




def measure_recall(index: faiss.Index, vectors: np.ndarray, *, k: int = 10, nq: int = DEFAULT_RECALL_QUERIES,
                   seed: int = 1) -> float:
    """recall@k of ``index`` at its nprobe against exact search over ``vectors`` (rows = ids), self excluded."""
    x = normalized(vectors)
    if x.shape[1] != index.d or x.shape[0] != index.ntotal:
        raise IndexingError(f"measure_recall needs the index's own vectors: got {x.shape[0]} x {x.shape[1]}, "
                            f"the index holds {index.ntotal} x {index.d}")
    return float(held_out_recall(index, x, nq=nq, seed=seed, k=k, nprobe=_ivf_attr(index, "nprobe"))["recall_at_10"])


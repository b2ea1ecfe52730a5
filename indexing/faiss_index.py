"""FAISS indexes over vectors: build, recall measured and nprobe tuned, filtered search, incremental add.

Small free functions over numpy arrays (faiss contrib/ondisk.py, autofaiss style). FAISS ids are
store rows. Vectors are L2-normalised and searched by inner product, so scores are cosines. Files
and sidecars live in ``indexing.index_files`` (written by the writer only); queries go through
``indexing.view``; GPU placement is ``indexing.gpu``; ``indexing.ann`` builds layouts planned by
rows and a memory budget on the same pieces (``Rows``, ``sample_rows``, ``finish_build``).

- ``build_index``: exact ``IndexFlatIP`` by default; past ``ivf_threshold`` rows (or by an
  index-factory string) an IVF index trained on a seeded sample.
- ``held_out_recall`` (every builder's, through ``finish_build``): recall@10 against exact search
  on held-out rows of the indexed data, own hit dropped, with ``tune_nprobe`` picking the smallest
  nprobe that reaches ``target_recall``; kept in ``info`` and in the sidecar JSON.
- Filters run inside FAISS through ``IDSelectorBitmap`` in the search parameters (no over-fetch).
- GPU when faiss sees one; saved from a CPU copy so index files are portable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from indexing.errors import IndexingError, IndexStaleError
# faiss itself comes from indexing.gpu, which says which extra to install when it is missing
from indexing.gpu import UseGpu, cpu_twin, faiss, is_gpu_index, resolve_use_gpu, to_gpu

logger = logging.getLogger(__name__)

#: Rows past which "auto" switches from exact search to IVF (DESIGN.md: flat search of 1M x 256
#: takes ~100 ms on this class of machine; at 200k it is still ~20 ms).
DEFAULT_IVF_THRESHOLD = 200_000
#: recall@10 that nprobe auto-tuning aims for.
DEFAULT_TARGET_RECALL = 0.95
#: Held-out queries used to measure recall at build time.
DEFAULT_RECALL_QUERIES = 500
REBUILD_HINT = "rebuild it with `etp-search index DATA_DIR --rebuild-index`"
_FACTORY_EXAMPLES = "use 'auto', 'Flat', 'IVF1024,Flat' or 'IVF4096,PQ32'"
#: FAISS k-means wants ~39 training points per centroid (it warns below that).
_POINTS_PER_LIST = 39
#: Rows read (and added) at a time from a big source.
DEFAULT_CHUNK_ROWS = 65_536


# ----------------------------------------------------------------------------- build


class Rows(Protocol):
    """What builders and ``exact_knn`` read: ``shape`` and ``x[a:b]`` giving a (b-a, dim) array
    (an ndarray, an ``h5py.Dataset``, a ``np.memmap``, a store's column), so that big inputs are
    read in chunks and never whole."""

    @property
    def shape(self) -> tuple[int, ...]: ...  # read-only, so a (rows, dim) tuple satisfies it

    def __getitem__(self, key: Any) -> Any: ...


def iter_chunks(data: Rows, chunk_rows: int = DEFAULT_CHUNK_ROWS, start: int = 0,
                stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row0, float32 C-contiguous block) of at most ``chunk_rows`` rows from ``data``."""
    n = int(data.shape[0]) if stop is None else int(stop)
    for a in range(start, n, chunk_rows):
        b = min(n, a + chunk_rows)
        yield a, np.ascontiguousarray(data[a:b], dtype=np.float32)


def sample_rows(data: Rows, size: int, seed: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """A uniform random sample of ``size`` rows (the training sample), read chunk by chunk, in row order."""
    n = int(data.shape[0])
    if size >= n:
        return np.concatenate([blk for _, blk in iter_chunks(data, chunk_rows)]) if n else np.empty((0, data.shape[1]), np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    out = np.empty((size, int(data.shape[1])), np.float32)
    pos = 0
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        lo, hi = np.searchsorted(rows, [a, b])
        if hi > lo:
            block = np.asarray(data[a:b], dtype=np.float32)
            out[pos:pos + hi - lo] = block[rows[lo:hi] - a]
            pos += hi - lo
    return out


def normalized(x: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, unit-norm rows; returns ``x`` itself when it already is (no copy)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise IndexingError(f"expected a 2-D array of vectors, got shape {x.shape}")
    norms = np.einsum("ij,ij->i", x, x)
    if x.shape[0] and np.all(np.abs(norms - 1.0) < 1e-4):
        return x
    x = x.copy()
    faiss.normalize_L2(x)
    return x


def choose_factory(n: int, factory: str = "auto", ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
                   nlist: int | None = None) -> str:
    """The index-factory string "auto" stands for at ``n`` rows (a factory string passes through)."""
    if factory != "auto":
        return factory
    if n < ivf_threshold:
        return "Flat"
    return f"IVF{nlist or auto_nlist(n)},Flat"


def auto_nlist(n: int) -> int:
    """Number of IVF lists: a power of two near sqrt(n) (FAISS guidelines: 4*sqrt(n)..16*sqrt(n)
    for best speed; sqrt(n) keeps k-means training affordable on a few CPU cores)."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF part of an index (``faiss.extract_index_ivf``), None when it has none."""
    with contextlib.suppress(Exception):
        return faiss.extract_index_ivf(index)
    return None


def _ivf_attr(index: faiss.Index, name: str) -> int | None:
    """nlist / nprobe of a CPU IVF (possibly behind OPQ), a GPU IVF, or a GPU index's CPU twin."""
    for cand in (index, cpu_twin(index)):
        if cand is None:
            continue
        ivf = _ivf(cand)
        if ivf is not None:
            return int(getattr(ivf, name))
        if hasattr(cand, name):
            return int(getattr(cand, name))
    return None


def _faiss_reason(err: Exception) -> str:
    """The human part of a faiss C++ error (no function signature, file or line)."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    m = re.match(r"^Error: '(.*?)' failed:? ?(.*)$", text)
    if m:
        text = m.group(2) or m.group(1)
    return text[:160]


def check_factory(factory: str, dim: int, n_rows: int | None = None) -> None:
    """Raise IndexingError (one line, with a fix) when ``factory`` cannot index ``n_rows`` x ``dim``.

    Cheap (builds an empty index, trains nothing): call it before embedding anything so a bad
    ``--factory`` fails in a second, not after an hour of encoding. "auto" is always valid.

    Args:
        factory: "auto" or a faiss index-factory string ("Flat", "IVF1024,Flat", "IVF4096,PQ32").
        dim: vector dimension.
        n_rows: rows the index will be trained on, when known: IVF needs at least one row per list
            and PQ at least one per centroid (256 for 8-bit codes).
    """
    if not isinstance(factory, str) or not factory.strip():
        raise IndexingError(f"empty FAISS factory; {_FACTORY_EXAMPLES}")
    if factory == "auto":
        return
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = _faiss_reason(e)
        if "could not parse" in reason:
            raise IndexingError(f"unknown FAISS factory {factory!r}; {_FACTORY_EXAMPLES}") from None
        raise IndexingError(f"FAISS factory {factory!r} does not fit {dim}-d vectors ({reason}); "
                            f"{_FACTORY_EXAMPLES}") from None
    if n_rows is None:
        return
    n = int(n_rows)
    ivf = _ivf(index)
    if ivf is not None and int(ivf.nlist) > n:
        nlist = int(ivf.nlist)
        fewer = max(1, n // _POINTS_PER_LIST)
        raise IndexingError(f"IVF{nlist} needs at least {nlist} rows to train (the store has {n}); "
                            f"use --factory auto or fewer lists, e.g. IVF{fewer}")
    pq = None
    for cand in (ivf, index):
        if pq is None and cand is not None:
            with contextlib.suppress(Exception):
                pq = faiss.downcast_index(cand).pq  # type: ignore[attr-defined]  # faiss stub types the downcast as the base Index
    if pq is not None and int(pq.ksub) > n:
        raise IndexingError(f"{factory!r} uses PQ codes that need at least {int(pq.ksub)} rows to train "
                            f"(the store has {n}); use --factory auto or an IVF...,Flat factory")


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
        nlist: IVF lists for "auto" (default ``auto_nlist(n)``).
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


def _set_nprobe(index: faiss.Index, nprobe: int) -> None:
    if is_gpu_index(index):
        with contextlib.suppress(Exception):
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        twin = cpu_twin(index)
        if twin is not None:
            _set_nprobe(twin, nprobe)
        return
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def measure_recall(index: faiss.Index, vectors: np.ndarray, *, k: int = 10, nq: int = DEFAULT_RECALL_QUERIES,
                   seed: int = 1) -> float:
    """recall@k of ``index`` at its nprobe against exact search over ``vectors`` (rows = ids), self excluded."""
    x = normalized(vectors)
    if x.shape[1] != index.d or x.shape[0] != index.ntotal:
        raise IndexingError(f"measure_recall needs the index's own vectors: got {x.shape[0]} x {x.shape[1]}, "
                            f"the index holds {index.ntotal} x {index.d}")
    return float(held_out_recall(index, x, nq=nq, seed=seed, k=k, nprobe=_ivf_attr(index, "nprobe"))["recall_at_10"])


# ----------------------------------------------------------------------------- search


def _selector(allowed_rows: ArrayLike, ntotal: int) -> tuple[faiss.IDSelector, np.ndarray, int]:
    """(selector, buffer that must outlive it, number of allowed rows)."""
    allowed = np.asarray(allowed_rows)
    if allowed.dtype == bool:
        if allowed.shape != (ntotal,):
            raise IndexingError(f"the row filter has {allowed.shape[0]} entries but the index holds {ntotal} rows; "
                                f"the index is out of date: {REBUILD_HINT}")
        mask = allowed
    else:
        rows = allowed.astype(np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= ntotal):
            raise IndexingError(f"filter rows must lie in [0, {ntotal}); the index is out of date: {REBUILD_HINT}")
        mask = np.zeros(ntotal, dtype=bool)
        mask[rows] = True
    # Bitmap membership is O(1) per candidate, whatever the selectivity; 1M rows cost 125 kB.
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(ntotal, faiss.swig_ptr(bits)), bits, int(mask.sum())


def _params(index: faiss.Index, sel: faiss.IDSelector | None, nprobe: int | None) -> faiss.SearchParameters:
    if isinstance(index, faiss.IndexRefine):  # IVF-PQ + refine (indexing.ann): filter and probe the base
        # faiss's stub omits the keyword __init__ its class_wrappers install (which also keeps the base's
        # parameters alive on faiss 1.8), hence the ignore
        return faiss.IndexRefineSearchParameters(k_factor=float(index.k_factor),  # type: ignore[call-arg]
                                                 base_index_params=_params(index.base_index, sel, nprobe))
    p: faiss.SearchParameters
    if _ivf_attr(index, "nlist") is not None:
        p = faiss.SearchParametersIVF()
        p.nprobe = int(nprobe or _ivf_attr(index, "nprobe") or 1)
    else:
        p = faiss.SearchParameters()
    if sel is not None:
        p.sel = sel
    return p


def search(index: faiss.Index, queries: np.ndarray, k: int, allowed_rows: ArrayLike | None = None, *,
           nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by cosine, optionally only among ``allowed_rows`` (bool mask or row ids).

    The filter is applied inside FAISS (IDSelectorBitmap). With IVF, when the probed lists hold
    fewer than k allowed rows, nprobe is widened (x4, up to all lists) for those queries, so a
    selective filter still returns every allowed row it should. ``k`` larger than the number of
    allowed rows returns fewer columns; no -1 rows are returned.

    Returns:
        (scores (nq, k') float32, rows (nq, k') int64), best first, k' <= k.
    """
    q = normalized(np.atleast_2d(queries))
    if q.shape[1] != index.d:
        raise IndexingError(f"query vectors have dimension {q.shape[1]} but the index has {index.d}; "
                            "use the checkpoint the store was built with")
    ntotal = int(index.ntotal)
    if ntotal == 0:
        raise IndexingError("the index is empty (its store has no rows); index a dataset into the store first")
    sel, keep_alive, n_allowed = (None, None, ntotal) if allowed_rows is None else _selector(allowed_rows, ntotal)
    k_eff = int(min(k, n_allowed))
    nq = q.shape[0]
    if k_eff <= 0:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
    nprobe = nprobe or _ivf_attr(index, "nprobe")
    scores, rows = _search_once(index, q, k_eff, sel, nprobe)
    nlist = _ivf_attr(index, "nlist")
    if nlist is not None and nprobe:
        p = nprobe
        while (rows < 0).any() and p < nlist:
            p = min(nlist, p * 4)
            redo = np.flatnonzero((rows < 0).any(axis=1))
            logger.debug("widening nprobe to %d for %d queries with too few allowed rows", p, len(redo))
            scores[redo], rows[redo] = _search_once(index, q[redo], k_eff, sel, p)
    del keep_alive
    valid = (rows >= 0).sum(axis=1)
    width = int(valid.min())
    if width < k_eff:
        logger.warning("index %s returned fewer than %d results for some queries; trimming to %d",
                       type(index).__name__, k_eff, width)
    if width < rows.shape[1]:
        scores, rows = scores[:, :width], rows[:, :width]
    return scores, rows


def _search_once(index: faiss.Index, q: np.ndarray, k: int, sel: faiss.IDSelector | None, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    if sel is None and (nprobe is None or is_gpu_index(index)):
        if nprobe and is_gpu_index(index):
            _set_nprobe(index, nprobe)
        return index.search(q, k)
    if is_gpu_index(index):
        try:
            return index.search(q, k, params=_params(index, sel, nprobe))
        except Exception as e:  # GPU indexes of many faiss builds reject IDSelectors
            cpu = cpu_twin(index, make=True)
            assert cpu is not None  # a GPU index always gets its twin with make=True
            logger.debug("GPU index cannot filter (%s); searching its CPU copy", e)
            return cpu.search(q, k, params=_params(cpu, sel, nprobe))
    return index.search(q, k, params=_params(index, sel, nprobe))


def update_index(index: faiss.Index, new_vectors: np.ndarray, start_row: int) -> faiss.Index:
    """Add rows ``start_row..`` to an index without retraining (IVF assigns them to trained lists)."""
    if int(index.ntotal) != int(start_row):
        raise IndexStaleError(f"cannot add rows from {start_row}: the index holds {index.ntotal} rows; {REBUILD_HINT}")
    x = normalized(new_vectors)
    if x.shape[0]:
        if x.shape[1] != index.d:
            raise IndexStaleError(f"new vectors have dimension {x.shape[1]}, the index {index.d}; {REBUILD_HINT}")
        index.add(x)
        twin = cpu_twin(index)
        if twin is not None and twin is not index:
            twin.add(x)
    return index

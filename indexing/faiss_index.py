"""FAISS indexes over store vectors: build, filtered search, save/load with a sidecar, incremental add.

Small free functions over numpy arrays (faiss contrib/ondisk.py, autofaiss style). FAISS ids are
store rows. Vectors are L2-normalised and searched by inner product, so scores are cosines.

- Exact ``IndexFlatIP`` by default; past ``ivf_threshold`` rows (or by an index-factory string) an
  IVF index trained on a seeded sample, with ``nprobe`` tuned at build time to reach
  ``target_recall`` recall@10 against exact search on held-out queries; the measured recall is
  kept in ``info`` and in the sidecar JSON.
- Filters run inside FAISS through ``IDSelectorBitmap`` in the search parameters (no over-fetch).
- GPU when faiss sees one; saved from a CPU copy so index files are portable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexing._io import atomic_write, check_file_path
from indexing.errors import IndexingError, IndexStaleError, StoreError

try:
    import faiss
except ImportError:  # FAISS is an extra (faiss-cpu or faiss-gpu both install `faiss`): say which to add
    raise IndexingError(
        "FAISS is not installed; install it with `pip install 'etp-search[cpu]'` (or `[gpu]` for faiss-gpu)") from None

logger = logging.getLogger(__name__)

#: Rows past which "auto" switches from exact search to IVF (DESIGN.md: flat search of 1M x 256
#: takes ~100 ms on this class of machine; at 200k it is still ~20 ms).
DEFAULT_IVF_THRESHOLD = 200_000
#: recall@10 that nprobe auto-tuning aims for.
DEFAULT_TARGET_RECALL = 0.95
#: Held-out queries used to measure recall at build time.
DEFAULT_RECALL_QUERIES = 500
SIDECAR_VERSION = 1
_REBUILD = "it is rebuilt from the store automatically, or run `etp-search index DATA_DIR --rebuild-index`"
_FACTORY_EXAMPLES = "use 'auto', 'Flat', 'IVF1024,Flat' or 'IVF4096,PQ32'"
#: FAISS k-means wants ~39 training points per centroid (it warns below that).
_POINTS_PER_LIST = 39


# ----------------------------------------------------------------------------- GPU selection


def gpu_available() -> bool:
    """True when this faiss build has GPU symbols and sees at least one device."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu") \
        and faiss.get_num_gpus() > 0


def resolve_use_gpu(use_gpu: bool | str) -> bool:
    """Turn "auto" / True / False into a decision; True without a GPU is a user error."""
    if use_gpu == "auto":
        return gpu_available()
    if use_gpu is True or use_gpu == "true":
        if not gpu_available():
            raise IndexingError("a GPU index was requested but faiss sees no GPU; install the faiss-gpu build "
                                "(pip install 'etp-search[gpu]') or drop --gpu")
        return True
    if use_gpu is False or use_gpu == "false":
        return False
    raise IndexingError(f"use_gpu must be 'auto', True or False, not {use_gpu!r}")


_GPU_RES: Any = None


def _gpu_resources() -> Any:
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    return _GPU_RES


def is_gpu_index(index: Any) -> bool:
    return type(index).__name__.startswith("Gpu") or bool(getattr(index, "_etp_on_gpu", False))


def to_gpu(index: Any) -> Any:
    """Copy a CPU index to GPU 0; index types the GPU cannot hold stay on CPU (logged)."""
    if is_gpu_index(index):
        return index
    try:
        gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    except Exception as e:  # e.g. PQ code sizes the GPU kernels do not support
        logger.warning("keeping the index on CPU: faiss could not move it to the GPU (%s)", e)
        return index
    gpu._etp_cpu = index  # CPU twin for filtered searches the GPU index cannot take
    return gpu


def to_cpu(index: Any) -> Any:
    """CPU version of an index (itself when already on CPU)."""
    if not is_gpu_index(index):
        return index
    return faiss.index_gpu_to_cpu(index)


# ----------------------------------------------------------------------------- build


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


def _ivf(index: Any) -> Any | None:
    with contextlib.suppress(Exception):
        return faiss.extract_index_ivf(index)
    return None


def _ivf_attr(index: Any, name: str) -> int | None:
    """nlist / nprobe of a CPU IVF (possibly behind OPQ), a GPU IVF, or a GPU index's CPU twin."""
    for cand in (index, getattr(index, "_etp_cpu", None)):
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
                pq = faiss.downcast_index(cand).pq
    if pq is not None and int(pq.ksub) > n:
        raise IndexingError(f"{factory!r} uses PQ codes that need at least {int(pq.ksub)} rows to train "
                            f"(the store has {n}); use --factory auto or an IVF...,Flat factory")


def build_index(vectors: np.ndarray, *, factory: str = "auto", ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
                nlist: int | None = None, nprobe: int | None = None, use_gpu: bool | str = "auto",
                seed: int = 0, target_recall: float = DEFAULT_TARGET_RECALL,
                recall_queries: int = DEFAULT_RECALL_QUERIES, train_size: int | None = None) -> tuple[Any, dict]:
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
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"factory": spec, "factory_requested": factory, "dim": d, "metric": "inner_product",
                            "normalized": True, "seed": seed, "faiss_version": faiss.__version__}
    if ivf is not None:
        ivf.cp.seed = seed
        info["nlist"] = int(ivf.nlist)
    index = cpu_index
    if on_gpu:
        index = to_gpu(cpu_index)
        if index is not cpu_index:
            index._etp_cpu = None  # the twin would stay empty: made lazily if a filter needs it
    if not cpu_index.is_trained:
        ntrain = train_size or max(64 * (ivf.nlist if ivf is not None else 256), 10_000)
        ntrain = min(n, ntrain)
        train_rows = np.sort(rng.choice(n, size=ntrain, replace=False)) if ntrain < n else np.arange(n)
        info["train_size"] = int(ntrain)
        t_train = time.perf_counter()
        try:
            index.train(x[train_rows])
        except RuntimeError as e:  # whatever check_factory cannot foresee, still as one line
            raise IndexingError(f"faiss could not train {spec!r} on {ntrain} rows ({_faiss_reason(e)}); "
                                "use --factory auto, or fewer IVF lists / PQ codes") from None
        info["train_seconds"] = round(time.perf_counter() - t_train, 3)
    index.add(x)
    info["n_rows"] = info["n_rows_at_build"] = int(index.ntotal)
    info["on_gpu"] = is_gpu_index(index)
    if ivf is None and spec == "Flat":
        info.update(recall_at_10=1.0, recall_exact=True)
    else:
        _tune_and_measure(index, x, info, nprobe=nprobe, target=target_recall, nq=recall_queries, rng=rng)
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("built %s over %d x %d in %.1fs (recall@10 %.3f%s)", spec, n, d, info["build_seconds"],
                info["recall_at_10"], f", nprobe {info['nprobe']}" if "nprobe" in info else "")
    return index, info


def _tune_and_measure(index: Any, x: np.ndarray, info: dict, *, nprobe: int | None, target: float, nq: int,
                      rng: np.random.Generator) -> None:
    """Measure recall@10 vs exact on held-out rows; pick the smallest nprobe reaching ``target``.

    The query's own row is dropped from both result lists: it is always found first and would
    inflate recall by up to 0.1.
    """
    n = x.shape[0]
    k = min(10, n - 1)
    if k < 1:
        info.update(recall_at_10=1.0, recall_queries=0)
        return
    q_rows = np.sort(rng.choice(n, size=min(nq, n), replace=False))
    xq = x[q_rows]
    _, gt = faiss.knn(xq, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    gt = _drop_self(gt, q_rows, k)
    nlist = _ivf_attr(index, "nlist")
    candidates = [nprobe] if nprobe else _nprobe_ladder(nlist or 1)
    best = (None, -1.0)
    for p in candidates:
        _, got = search(index, xq, k + 1, nprobe=p, _widen=False)
        got = _drop_self(got, q_rows, k)
        r = _recall(got, gt)
        logger.debug("nprobe %s: recall@%d %.4f", p, k, r)
        gain = r - best[1]
        if r > best[1]:
            best = (p, r)
        if r >= target or (gain < 0.002 and p != candidates[0]):
            break  # reached the target, or more probes no longer help (PQ quantisation bound)
    chosen, recall = best
    if chosen is not None:
        _set_nprobe(index, chosen)
        info["nprobe"] = int(chosen)
    info.update(recall_at_10=round(float(recall), 4), recall_queries=int(len(q_rows)), recall_exact=False)


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


def _recall(got: np.ndarray, gt: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(g[g >= 0], t[t >= 0])) for g, t in zip(got, gt))
    return hits / max(1, int((gt >= 0).sum()))


def _set_nprobe(index: Any, nprobe: int) -> None:
    if is_gpu_index(index):
        with contextlib.suppress(Exception):
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        twin = getattr(index, "_etp_cpu", None)
        if twin is not None:
            _set_nprobe(twin, nprobe)
        return
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def measure_recall(index: Any, vectors: np.ndarray, *, k: int = 10, nq: int = DEFAULT_RECALL_QUERIES,
                   seed: int = 1) -> float:
    """recall@k of ``index`` against exact search over ``vectors`` (rows = ids), self excluded."""
    info: dict[str, Any] = {}
    x = normalized(vectors)
    _tune_and_measure(index, x, info, nprobe=_ivf_attr(index, "nprobe") or 1, target=1.0, nq=nq,
                      rng=np.random.default_rng(seed))
    return float(info["recall_at_10"])


# ----------------------------------------------------------------------------- search


def _selector(allowed_rows: Any, ntotal: int) -> tuple[Any, Any, int]:
    """(selector, buffer that must outlive it, number of allowed rows)."""
    allowed = np.asarray(allowed_rows)
    if allowed.dtype == bool:
        if allowed.shape != (ntotal,):
            raise IndexingError(f"the row filter has {allowed.shape[0]} entries but the index holds {ntotal} rows; "
                                f"the index is out of date: {_REBUILD}")
        mask = allowed
    else:
        rows = allowed.astype(np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= ntotal):
            raise IndexingError(f"filter rows must lie in [0, {ntotal}); the index is out of date: {_REBUILD}")
        mask = np.zeros(ntotal, dtype=bool)
        mask[rows] = True
    # Bitmap membership is O(1) per candidate, whatever the selectivity; 1M rows cost 125 kB.
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(ntotal, faiss.swig_ptr(bits)), bits, int(mask.sum())


def _params(index: Any, sel: Any, nprobe: int | None) -> Any:
    if _ivf_attr(index, "nlist") is not None:
        p = faiss.SearchParametersIVF()
        p.nprobe = int(nprobe or _ivf_attr(index, "nprobe") or 1)
    else:
        p = faiss.SearchParameters()
    if sel is not None:
        p.sel = sel
    return p


def search(index: Any, queries: np.ndarray, k: int, allowed_rows: Any = None, *, nprobe: int | None = None,
           _widen: bool = True) -> tuple[np.ndarray, np.ndarray]:
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
    if _widen and nlist is not None and nprobe:
        p = nprobe
        while (rows < 0).any() and p < nlist:
            p = min(nlist, p * 4)
            redo = np.flatnonzero((rows < 0).any(axis=1))
            logger.debug("widening nprobe to %d for %d queries with too few allowed rows", p, len(redo))
            scores[redo], rows[redo] = _search_once(index, q[redo], k_eff, sel, p)
    del keep_alive
    valid = (rows >= 0).sum(axis=1)
    width = int(valid.min())
    if width < k_eff and _widen:
        logger.warning("index %s returned fewer than %d results for some queries; trimming to %d",
                       type(index).__name__, k_eff, width)
    if width < rows.shape[1]:
        if not _widen:
            return scores, rows  # recall measurement wants the raw -1 padding
        scores, rows = scores[:, :width], rows[:, :width]
    return scores, rows


def _search_once(index: Any, q: np.ndarray, k: int, sel: Any, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    if sel is None and (nprobe is None or is_gpu_index(index)):
        if nprobe and is_gpu_index(index):
            _set_nprobe(index, nprobe)
        return index.search(q, k)
    if is_gpu_index(index):
        try:
            return index.search(q, k, params=_params(index, sel, nprobe))
        except Exception as e:  # GPU indexes of many faiss builds reject IDSelectors
            cpu = getattr(index, "_etp_cpu", None)
            if cpu is None:
                cpu = index._etp_cpu = faiss.index_gpu_to_cpu(index)
            logger.debug("GPU index cannot filter (%s); searching its CPU copy", e)
            return cpu.search(q, k, params=_params(cpu, sel, nprobe))
    return index.search(q, k, params=_params(index, sel, nprobe))


# ----------------------------------------------------------------------------- persistence


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def save_index(index: Any, path: str | os.PathLike, info: dict) -> dict:
    """Write the index (from CPU) and its sidecar JSON atomically; returns the sidecar dict.

    The index file is replaced before the sidecar, and the sidecar records the file size and
    row count, so a crash between the two is caught by ``load_index`` as a stale index.
    """
    path = Path(path)
    check_file_path(path, "index", "store.h5.ecg.faiss")
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = to_cpu(index)
    atomic_write(path, lambda tmp: faiss.write_index(cpu, str(tmp)))
    meta = dict(info)
    meta.update(sidecar_version=SIDECAR_VERSION, n_rows=int(cpu.ntotal), dim=int(cpu.d),
                file_bytes=path.stat().st_size, saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for key in ("on_gpu", "saved_to_disk", "truncated_from"):  # facts about this process's copy only
        meta.pop(key, None)
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text))
    logger.info("saved index %s (%d rows, %.1f MB)", path, cpu.ntotal, meta["file_bytes"] / 1e6)
    return meta


def load_index(path: str | os.PathLike, store_uuid: str, n_rows: int, *, allow_behind: bool = False,
               allow_ahead: bool = False, use_gpu: bool | str = False) -> tuple[Any, dict]:
    """Load an index and check it against its store.

    Raises IndexStaleError (saying it is rebuildable) when the file or sidecar is missing or
    corrupt, belongs to another store, or holds more rows than the store (or fewer, unless
    ``allow_behind``: then the caller adds rows ``info["n_rows"]:n_rows`` with update_index).
    With ``allow_ahead``, an index holding more rows than ``n_rows`` (saved by a writer after
    this reader opened the store) is cut back to ``n_rows`` in memory; ``info["truncated_from"]``
    then says so, and such an index must not be saved.
    """
    path = Path(path)
    check_file_path(path, "index", "store.h5.ecg.faiss")
    err: IndexStaleError | None = None
    for attempt in range(3):  # a writer replacing index + sidecar meanwhile can make one try see a mix
        try:
            index, info = _load_checked(path, store_uuid, n_rows, allow_behind, allow_ahead)
            break
        except _Torn as e:
            err = e
            time.sleep(0.05 * (attempt + 1))
    else:
        assert err is not None
        raise IndexStaleError(str(err))
    saved_rows = int(index.ntotal)
    if saved_rows > n_rows:
        cut = _truncated(index, n_rows)
        if cut is None:
            raise IndexStaleError(f"index {path} holds {saved_rows} rows but the store has {n_rows} and "
                                  f"{type(index).__name__} cannot drop rows; {_REBUILD}")
        info.update(truncated_from=saved_rows, n_rows=n_rows)
        index = cut
    if resolve_use_gpu(use_gpu):
        index = to_gpu(index)
    info["on_gpu"] = is_gpu_index(index)
    return index, info


class _Torn(IndexStaleError):
    """Index file and sidecar disagree: damaged, or caught mid-replace by a writer (retried)."""


def _load_checked(path: Path, store_uuid: str, n_rows: int, allow_behind: bool,
                  allow_ahead: bool) -> tuple[Any, dict]:
    side = sidecar_path(path)
    if not path.exists() or not side.exists():
        raise IndexStaleError(f"no index at {path} (or its sidecar {side.name}); {_REBUILD}")
    try:
        info = json.loads(side.read_text())
        expected_bytes, sidecar_rows = int(info["file_bytes"]), int(info["n_rows"])
    except (ValueError, KeyError, TypeError) as e:
        raise IndexStaleError(f"index sidecar {side} is unreadable ({e}); {_REBUILD}") from e
    if info.get("store_uuid") != store_uuid:
        raise IndexStaleError(f"index {path} was built for another store (uuid {info.get('store_uuid')}); {_REBUILD}")
    if path.stat().st_size != expected_bytes:
        raise _Torn(f"index {path} is damaged or from an interrupted write (size differs from its sidecar); "
                    f"{_REBUILD}")
    if (sidecar_rows > n_rows and not allow_ahead) or (sidecar_rows < n_rows and not allow_behind):
        raise IndexStaleError(f"index {path} holds {sidecar_rows} rows but the store has {n_rows}; {_REBUILD}")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise _Torn(f"index {path} is corrupt ({_faiss_reason(e)[:80]}); {_REBUILD}") from e
    if int(index.ntotal) != sidecar_rows or int(index.d) != int(info.get("dim", index.d)):
        raise _Torn(f"index {path} does not match its sidecar ({index.ntotal} rows); {_REBUILD}")
    return index, info


def _truncated(index: Any, n_rows: int) -> Any | None:
    """The CPU ``index`` without its rows from ``n_rows`` on (ids are rows), or None if it cannot."""
    try:
        removed = index.remove_ids(faiss.IDSelectorRange(int(n_rows), int(index.ntotal)))
    except RuntimeError:
        return None
    if int(index.ntotal) != n_rows:
        logger.debug("dropping rows from %s removed %s, left %d", type(index).__name__, removed, index.ntotal)
        return None
    return index


def update_index(index: Any, new_vectors: np.ndarray, start_row: int) -> Any:
    """Add rows ``start_row..`` to an index without retraining (IVF assigns them to trained lists)."""
    if int(index.ntotal) != int(start_row):
        raise IndexStaleError(f"cannot add rows from {start_row}: the index holds {index.ntotal} rows; {_REBUILD}")
    x = normalized(new_vectors)
    if x.shape[0]:
        if x.shape[1] != index.d:
            raise IndexStaleError(f"new vectors have dimension {x.shape[1]}, the index {index.d}; {_REBUILD}")
        index.add(x)
        twin = getattr(index, "_etp_cpu", None)
        if twin is not None and twin is not index:
            twin.add(x)
    return index


# ----------------------------------------------------------------------------- lead-level helper


def default_index_path(store_path: str | os.PathLike, which: str) -> Path:
    return Path(f"{store_path}.{which}.faiss")


def open_or_build(store: Any, which: str = "ecg", index_path: str | os.PathLike | None = None,
                  factory: str = "auto", *, use_gpu: bool | str = "auto", rebuild: bool = False,
                  ivf_threshold: int = DEFAULT_IVF_THRESHOLD, nprobe: int | None = None,
                  seed: int = 0) -> tuple[Any, dict]:
    """Index for ``store``'s ``which`` vectors ("ecg" or "text"): load it when it is current, add the
    rows appended since it was saved, or (re)build it when missing, stale, corrupt, of another
    factory, or when "auto" crosses the flat -> IVF threshold.

    Index files are written only under the store's write lock: while another process (an
    ``etp-search index`` run) holds it, a reader keeps what it built or added in memory, and an
    index saved by that writer for more rows than this reader sees is cut back in memory.
    ``info["saved_to_disk"]`` says whether the files were (re)written.
    """
    if which not in ("ecg", "text"):
        raise IndexingError(f"unknown vector kind {which!r}; use 'ecg' or 'text'")
    n = len(store)
    if n == 0:
        if hasattr(store, "check_not_empty"):
            store.check_not_empty()
        raise StoreError(f"store {store.path} is empty; index a dataset into it first")
    path = Path(index_path) if index_path else default_index_path(store.path, which)
    check_file_path(path, "index", f"{Path(store.path).name}.{which}.faiss")
    check_factory(factory, store.dim, n)
    writer = bool(getattr(store, "holds_write_lock", False))
    reason = "--rebuild-index was given" if rebuild else None
    index = info = None
    if reason is None:
        try:
            # Only a reader may see a saved index ahead of its view of the store (the writer
            # appended and saved after the reader opened). For the writer, whose view is current,
            # an index ahead of the store is stale.
            index, info = load_index(path, store.uuid, n, allow_behind=True, allow_ahead=not writer,
                                     use_gpu=use_gpu)
        except IndexStaleError as e:
            reason = str(e)
    if index is not None:
        assert info is not None
        if info.get("which", which) != which:
            reason = f"{path} indexes {info.get('which')} vectors, not {which}"
        elif factory != info.get("factory_requested", info.get("factory")):
            reason = f"factory {factory!r} requested, the index was built with {info.get('factory_requested')!r}"
        elif factory == "auto" and info.get("factory") == "Flat" and n >= ivf_threshold:
            reason = f"the store grew past {ivf_threshold} rows: switching from exact to IVF"
        elif factory == "auto" and "nlist" in info and n > 4 * int(info.get("n_rows_at_build", n)):
            # IVF lists trained on a quarter of today's rows are too few and too long to stay fast
            reason = f"the store grew more than 4x since the IVF lists were trained ({info['n_rows_at_build']} rows)"
    if reason is None and index is not None and info is not None:
        have = int(index.ntotal)
        if "truncated_from" in info:
            logger.info("using %s cut back to %d rows in memory (it was saved for %d by a newer writer)",
                        path, n, info["truncated_from"])
            info["saved_to_disk"] = False
            return index, info
        if have < n:
            t0 = time.perf_counter()
            update_index(index, store.vectors(which, slice(have, n)), have)
            info.update(n_rows=n, added_since_build=int(info.get("added_since_build", 0)) + n - have)
            logger.info("added %d new rows to %s in %.1fs", n - have, path, time.perf_counter() - t0)
            info = _save_if_free(store, index, path, info)
        else:
            info["saved_to_disk"] = False
        return index, info
    if path.exists() or rebuild:
        logger.warning("rebuilding %s: %s", path, reason)
    else:
        logger.info("building %s", path)
    vectors = store.vectors(which, slice(0, n))  # rows seen at the start, even if a refresh adds more
    index, info = build_index(vectors, factory=factory, ivf_threshold=ivf_threshold, nprobe=nprobe,
                              use_gpu=use_gpu, seed=seed)
    info.update(store_uuid=store.uuid, which=which, added_since_build=0)
    return index, _save_if_free(store, index, path, info)


def _save_if_free(store: Any, index: Any, path: Path, info: dict) -> dict:
    """Save under the store's write lock; keep the index in memory only if a writer holds it."""
    on_gpu = is_gpu_index(index)
    lock = store.write_lock() if hasattr(store, "write_lock") else contextlib.nullcontext(True)
    with lock as free:
        if not free:
            logger.info("not saving %s: another process is writing the store; using the index in memory", path)
            return dict(info, on_gpu=on_gpu, saved_to_disk=False)
        saved = save_index(index, path, info)
    return dict(saved, on_gpu=on_gpu, saved_to_disk=True)

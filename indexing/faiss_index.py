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
import time
import uuid as uuid_mod
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexing.errors import IndexingError, IndexStaleError, StoreError

logger = logging.getLogger(__name__)

#: Rows past which "auto" switches from exact search to IVF (DESIGN.md: flat search of 1M x 256
#: takes ~100 ms on this class of machine; at 200k it is still ~20 ms).
DEFAULT_IVF_THRESHOLD = 200_000
#: recall@10 that nprobe auto-tuning aims for.
DEFAULT_TARGET_RECALL = 0.95
#: Held-out queries used to measure recall at build time.
DEFAULT_RECALL_QUERIES = 500
SIDECAR_VERSION = 1
_REBUILD = "it is rebuilt from the store automatically, or run `etp-search index --rebuild-index`"


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
    try:
        cpu_index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexingError(f"faiss cannot build index {spec!r} ({str(e).splitlines()[-1][:100]}); "
                            "use a faiss index-factory string such as 'Flat', 'IVF1024,Flat' or 'IVF1024,PQ32'") from e
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
        index.train(x[train_rows])
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
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = to_cpu(index)
    tmp = path.parent / f".tmp-{uuid_mod.uuid4().hex}-{path.name}"
    try:
        faiss.write_index(cpu, str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    meta = dict(info)
    meta.update(sidecar_version=SIDECAR_VERSION, n_rows=int(cpu.ntotal), dim=int(cpu.d),
                file_bytes=path.stat().st_size, saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta.pop("on_gpu", None)
    side = sidecar_path(path)
    tmp_side = side.parent / f".tmp-{uuid_mod.uuid4().hex}-{side.name}"
    try:
        tmp_side.write_text(json.dumps(meta, indent=2, sort_keys=True))
        _fsync(tmp_side)
        os.replace(tmp_side, side)
    finally:
        with contextlib.suppress(OSError):
            tmp_side.unlink()
    with contextlib.suppress(OSError):
        _fsync(path.parent)
    logger.info("saved index %s (%d rows, %.1f MB)", path, cpu.ntotal, meta["file_bytes"] / 1e6)
    return meta


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_index(path: str | os.PathLike, store_uuid: str, n_rows: int, *, allow_behind: bool = False,
               use_gpu: bool | str = False) -> tuple[Any, dict]:
    """Load an index and check it against its store.

    Raises IndexStaleError (saying it is rebuildable) when the file or sidecar is missing or
    corrupt, belongs to another store, or holds more rows than the store (or fewer, unless
    ``allow_behind``: then the caller adds rows ``info["n_rows"]:n_rows`` with update_index).
    """
    path = Path(path)
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
        raise IndexStaleError(f"index {path} is damaged or from an interrupted write (size differs from its sidecar); "
                              f"{_REBUILD}")
    if sidecar_rows > n_rows or (sidecar_rows < n_rows and not allow_behind):
        raise IndexStaleError(f"index {path} holds {sidecar_rows} rows but the store has {n_rows}; {_REBUILD}")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexStaleError(f"index {path} is corrupt ({str(e).splitlines()[-1][:80]}); {_REBUILD}") from e
    if int(index.ntotal) != sidecar_rows or int(index.d) != int(info.get("dim", index.d)):
        raise IndexStaleError(f"index {path} does not match its sidecar ({index.ntotal} rows); {_REBUILD}")
    if resolve_use_gpu(use_gpu):
        index = to_gpu(index)
    info["on_gpu"] = is_gpu_index(index)
    return index, info


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
    factory, or when "auto" crosses the flat -> IVF threshold. Saves whatever it changed.
    """
    if which not in ("ecg", "text"):
        raise IndexingError(f"unknown vector kind {which!r}; use 'ecg' or 'text'")
    n = len(store)
    if n == 0:
        raise StoreError(f"store {store.path} is empty; embed records with `etp-search index DATA_DIR` first")
    path = Path(index_path) if index_path else default_index_path(store.path, which)
    reason = "--rebuild-index was given" if rebuild else None
    index = info = None
    if reason is None:
        try:
            index, info = load_index(path, store.uuid, n, allow_behind=True, use_gpu=use_gpu)
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
        if have < n:
            t0 = time.perf_counter()
            update_index(index, store.vectors(which, slice(have, n)), have)
            info.update(n_rows=n, added_since_build=int(info.get("added_since_build", 0)) + n - have)
            logger.info("added %d new rows to %s in %.1fs", n - have, path, time.perf_counter() - t0)
            info = save_index(index, path, info) | {"on_gpu": is_gpu_index(index)}
        return index, info
    if path.exists() or rebuild:
        logger.warning("rebuilding %s: %s", path, reason)
    else:
        logger.info("building %s", path)
    vectors = store.vectors(which)
    index, info = build_index(vectors, factory=factory, ivf_threshold=ivf_threshold, nprobe=nprobe,
                              use_gpu=use_gpu, seed=seed)
    info.update(store_uuid=store.uuid, which=which, added_since_build=0)
    on_gpu = info["on_gpu"]
    info = save_index(index, path, info)
    info["on_gpu"] = on_gpu
    return index, info

"""FAISS primitives over vectors: chunked reads, factory checks, filtered search, incremental add, one file.

Small free functions over numpy arrays (faiss contrib/ondisk.py, autofaiss style). FAISS ids are
store rows. Vectors are L2-normalised and searched by inner product, so scores are cosines.
Building and measuring an index is ``indexing.build`` (layouts planned by ``indexing.plan``, recall
by ``indexing.recall``), above this module; a store's index files and sidecars are
``indexing.index_files`` (written by the writer only); queries go through ``indexing.view``; GPU
placement is ``indexing.gpu``.

- Filters run inside FAISS through ``IDSelectorBitmap`` in the search parameters (no over-fetch).
- GPU when faiss sees one; saved from a CPU copy so index files are portable.
- One index file is read by ``read_faiss`` / ``read_index_file`` and written by ``write_index_file``
  (IVF lists kept on disk in ``PATH.ivfdata``, ``lists_path``); faiss's printf()s go to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from indexing._io import atomic_write
from indexing.errors import IndexingError, IndexStaleError
# faiss itself comes from indexing.gpu, which says which extra to install when it is missing
from indexing.gpu import cpu_twin, faiss, is_gpu_index, to_cpu

logger = logging.getLogger(__name__)

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
    if isinstance(index, faiss.IndexRefine):  # IVF-PQ + refine (indexing.plan): filter and probe the base
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


# ----------------------------------------------------------------------------- one index file


def lists_path(path: str | os.PathLike) -> Path:
    """Where the on-disk inverted lists of the index at ``path`` live (``PATH.ivfdata``)."""
    return Path(f"{path}.ivfdata")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 pointed at stderr meanwhile (faiss's C++ printf()s bypass ``sys.stdout``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def read_faiss(path: str | os.PathLike, flags: int = 0, *, source: str | None = None,
               error: type[IndexStaleError] = IndexStaleError) -> Any:
    """``faiss.read_index(source or path, flags)``: the one way an index file is opened. With
    ``flags`` (mapped lists) faiss's printf()s go to stderr, so ``--json`` output stays clean.
    Raises ``error`` naming ``path`` and ``--rebuild-index`` when faiss cannot read it."""
    try:
        with stdout_to_stderr() if flags else contextlib.nullcontext():
            return faiss.read_index(source or str(path), flags)
    except RuntimeError as e:
        reason = (str(e).strip().splitlines() or ["unreadable"])[-1][:80]
        raise error(f"index {path} is damaged or corrupt ({reason}); {REBUILD_HINT}") from e


def read_index_file(path: str | os.PathLike, mmap: bool = True) -> faiss.Index:
    """Read a bare index file (no sidecar checks: ``index_files.load_index`` adds those) with its
    inverted lists memory-mapped, not loaded.

    An on-disk index (``PATH.ivfdata`` beside it) is opened with ``IO_FLAG_ONDISK_SAME_DIR``:
    its ``OnDiskInvertedLists`` always map the .ivfdata file, and the folder may have moved.
    (``IO_FLAG_MMAP`` on such a file crashes faiss 1.15.1, so it is not passed there.) An index
    written whole is opened with ``IO_FLAG_MMAP`` when ``mmap``: its lists map the index file.
    """
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if lists_path(path).exists() else faiss.IO_FLAG_MMAP if mmap else 0
    return read_faiss(path, flags)


def write_index_file(index: faiss.Index, path: str | os.PathLike) -> None:
    """``faiss.write_index`` of a CPU copy through ``indexing._io.atomic_write`` (an on-disk index
    keeps its .ivfdata where it is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = to_cpu(index)
    atomic_write(path, lambda tmp: faiss.write_index(cpu, str(tmp)))


def set_search_params(index: faiss.Index, nprobe: int | None = None, k_factor: float | None = None) -> None:
    """Set the probe count of an IVF layout (at most nlist) and the refine over-fetch of IVF-PQ+refine."""
    if isinstance(index, faiss.IndexRefine) and k_factor is not None:
        index.k_factor = float(k_factor)
    nlist = _ivf_attr(index, "nlist")
    if nlist is not None and nprobe is not None:
        _set_nprobe(index, int(min(nprobe, nlist)))

"""Approximate-nearest-neighbour indexes sized to the corpus and a memory budget.

``plan_index`` picks a FAISS layout from the row count and a byte budget (``auto``: Flat below
~200k rows, IVF-Flat up to a few million, IVF-PQ with an SQ8 refine step beyond, or whenever the
budget no longer holds the full float vectors). ``build_index`` trains on a sample and adds rows
in chunks read from an array-like source (an ``h5py.Dataset``, a ``np.memmap`` or anything with
``shape`` and slice indexing), so all vectors are never in memory at once. With ``ondisk`` the
inverted lists are written through shards and ``faiss.contrib.ondisk.merge_ondisk`` into one
``.ivfdata`` file that ``load_index`` memory-maps (``IO_FLAG_MMAP``) at query time.
``exact_knn`` + ``recall_at_k`` measure recall@k against exact search on held-out queries, and
``tune_nprobe`` picks the smallest probe count that reaches a target on a calibration set.

Vectors are L2-normalised float32 and searched by inner product (cosine), as in the store.
Only numpy, h5py and faiss are imported: ``indexing/`` imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import numpy as np

from indexing._io import atomic_write

logger = logging.getLogger(__name__)

Kind = Literal["flat", "ivf_flat", "ivf_pq_refine"]
KINDS: tuple[Kind, ...] = ("flat", "ivf_flat", "ivf_pq_refine")

#: Row counts at which ``auto`` moves to the next layout when the budget allows the cheaper one.
FLAT_MAX_ROWS = 200_000
IVF_FLAT_MAX_ROWS = 3_000_000
#: Rows per training example per IVF list, and the cap on the training sample.
TRAIN_PER_LIST = 64
TRAIN_MAX = 262_144
DEFAULT_CHUNK_ROWS = 65_536
#: PQ with 8-bit codes trains 256 centroids per sub-quantizer: FAISS wants ~39 rows per centroid.
PQ_MIN_ROWS = 39 * 256


class ArrayLike(Protocol):
    """What ``build_index`` reads: ``shape`` and ``x[a:b]`` returning an (b-a, dim) array."""

    shape: tuple[int, ...]

    def __getitem__(self, key: Any) -> Any: ...


class AnnError(ValueError):
    """A plan that cannot be met (budget too small, unknown factory, bad source)."""


@dataclass(frozen=True)
class IndexPlan:
    """The chosen layout, its parameters and the bytes it is expected to hold in RAM."""

    kind: Kind
    n: int
    dim: int
    nlist: int
    pq_m: int
    ondisk: bool
    memory_bytes: int
    reason: str

    @property
    def factory(self) -> str:
        """The equivalent ``faiss.index_factory`` string (for the sidecar and for humans)."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf_flat":
            return f"IVF{self.nlist},Flat"
        return f"IVF{self.nlist},PQ{self.pq_m},Refine(SQ8)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factory": self.factory}


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two in [16, 4096], never fewer than 39 rows per list."""
    if n < 16 * 39:
        return max(1, n // 39)
    target = min(4096, max(16, 4 * math.sqrt(n)))
    nlist = 1 << int(round(math.log2(target)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: dim/8 (8 dimensions each, 8 bits), a divisor of dim, at least 1."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def estimate_memory(kind: Kind, n: int, dim: int, nlist: int = 0, pq_m: int = 0, ondisk: bool = False) -> int:
    """Bytes the index keeps in RAM: vectors or codes, ids, centroids (inverted lists not if on disk)."""
    if kind == "flat":
        return n * dim * 4
    centroids = nlist * dim * 4
    if kind == "ivf_flat":
        lists = n * (dim * 4 + 8)
        return centroids + (0 if ondisk else lists)
    if kind == "ivf_pq_refine":
        lists = n * (pq_m + 8)
        refine = n * dim  # SQ8: one byte per dimension
        pq_tables = dim * 256 * 4
        return centroids + pq_tables + refine + (0 if ondisk else lists)
    raise AnnError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")


def plan_index(n: int, dim: int, factory: str = "auto", max_memory: int | None = None,
               ondisk: bool = False, nlist: int | None = None, pq_m: int | None = None) -> IndexPlan:
    """Choose a layout for ``n`` rows of ``dim`` floats under ``max_memory`` bytes (None: no limit).

    ``factory`` is ``auto`` or one of ``KINDS``. ``auto`` takes the first of Flat (n < 200k),
    IVF-Flat (n <= 3M), IVF-PQ+refine whose estimated RAM fits the budget; a named kind that does
    not fit raises ``AnnError`` with the figure, as does a budget nothing fits.
    """
    if n <= 0 or dim <= 0:
        raise AnnError(f"cannot plan an index for {n} rows of dimension {dim}; add rows first")
    if factory != "auto" and factory not in KINDS:
        raise AnnError(f"unknown index factory {factory!r}; choose auto, {', '.join(KINDS)}")
    nl = nlist or default_nlist(n)
    m = pq_m or default_pq_m(dim)
    if dim % m:
        raise AnnError(f"PQ sub-quantizers {m} must divide the dimension {dim}")
    budget = max_memory if max_memory is not None else None

    def make(kind: Kind, reason: str) -> IndexPlan:
        use_nlist = 0 if kind == "flat" else nl
        return IndexPlan(kind, n, dim, use_nlist, m if kind == "ivf_pq_refine" else 0,
                         ondisk and kind != "flat",
                         estimate_memory(kind, n, dim, use_nlist, m, ondisk and kind != "flat"), reason)

    def fits(p: IndexPlan) -> bool:
        return budget is None or p.memory_bytes <= budget

    if factory != "auto":
        plan = make(factory, "named")  # type: ignore[arg-type]
        if plan.kind == "ivf_pq_refine" and n < PQ_MIN_ROWS:
            raise AnnError(f"IVF-PQ needs at least {PQ_MIN_ROWS} rows to train (have {n}); use Flat or IVF-Flat")
        if not fits(plan):
            raise AnnError(
                f"a {plan.factory} index of {n} rows needs ~{_mb(plan.memory_bytes)} in RAM, over the "
                f"budget of {_mb(budget or 0)}; raise --max-index-memory or use --factory auto"
            )
        return plan
    candidates: list[tuple[Kind, bool, str]] = [
        ("flat", n < FLAT_MAX_ROWS, f"{n} rows < {FLAT_MAX_ROWS}: exact search"),
        ("ivf_flat", n <= IVF_FLAT_MAX_ROWS, f"{n} rows <= {IVF_FLAT_MAX_ROWS}: IVF over full vectors"),
        ("ivf_pq_refine", True, "PQ codes with an SQ8 refine step"),
    ]
    for kind, by_rows, why in candidates:
        plan = make(kind, why)
        if by_rows and fits(plan):
            return plan
        if not by_rows:
            continue
        logger.info("%s of %d rows needs %s, over the budget %s", plan.factory, n, _mb(plan.memory_bytes), _mb(budget or 0))
    # Row count allowed a cheaper layout but the budget did not: fall through to PQ if it fits.
    plan = make("ivf_pq_refine", "budget")
    if fits(plan) and n >= PQ_MIN_ROWS:
        return plan
    hint = "raise --max-index-memory" + ("" if ondisk else " or keep the inverted lists on disk")
    if n < PQ_MIN_ROWS:
        raise AnnError(f"{n} rows x {dim} need ~{_mb(make('flat', '').memory_bytes)} as exact vectors, over "
                       f"{_mb(budget or 0)}, and PQ codes need {PQ_MIN_ROWS} rows to train; raise --max-index-memory")
    raise AnnError(
        f"no index of {n} rows x {dim} fits {_mb(budget or 0)} (IVF-PQ+refine needs ~{_mb(plan.memory_bytes)}); {hint}"
    )


def _mb(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


# ------------------------------------------------------------------------------------- reading


def iter_chunks(data: ArrayLike, chunk_rows: int = DEFAULT_CHUNK_ROWS, start: int = 0,
                stop: int | None = None) -> Any:
    """Yield (row0, float32 C-contiguous block) of at most ``chunk_rows`` rows from ``data``."""
    n = int(data.shape[0]) if stop is None else int(stop)
    for a in range(start, n, chunk_rows):
        b = min(n, a + chunk_rows)
        yield a, np.ascontiguousarray(data[a:b], dtype=np.float32)


def sample_rows(data: ArrayLike, size: int, seed: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """A uniform random sample of ``size`` rows, read chunk by chunk (sorted row order per chunk)."""
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


# ------------------------------------------------------------------------------------ building


def _empty_index(plan: IndexPlan) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if plan.kind == "flat":
        return faiss.IndexFlatIP(plan.dim)
    if plan.kind == "ivf_flat":
        return faiss.index_factory(plan.dim, f"IVF{plan.nlist},Flat", ip)
    return faiss.index_factory(plan.dim, f"IVF{plan.nlist},PQ{plan.pq_m}", ip)


@dataclass
class BuildReport:
    plan: dict[str, Any]
    rows: int
    train_rows: int
    train_s: float
    add_s: float
    chunks: int
    files: list[str]


def build_index(data: ArrayLike, plan: IndexPlan, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                train_size: int | None = None, seed: int = 0, out: str | os.PathLike | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[faiss.Index, BuildReport]:
    """Train ``plan``'s layout on a sample of ``data`` and add every row in chunks.

    Row ``i`` of ``data`` gets FAISS id ``i``. With ``plan.ondisk`` the inverted lists go to
    ``OUT.ivfdata`` (``out`` is then required: the index file path ``load_index`` opens, written
    here); shards of one chunk each are written beside it and removed after the merge.
    Returns the index (on-disk lists memory-mapped) and a ``BuildReport``.
    """
    n, dim = int(data.shape[0]), int(data.shape[1])
    if (n, dim) != (plan.n, plan.dim):
        raise AnnError(f"the plan is for {plan.n} x {plan.dim} but the data is {n} x {dim}; plan again")
    if plan.ondisk and out is None:
        raise AnnError("an on-disk index needs the path of the index file to write (out=...)")
    t0 = time.perf_counter()
    index = _empty_index(plan)
    refine: faiss.Index | None = None
    train_rows = 0
    if plan.kind != "flat":
        train_rows = min(n, train_size or min(TRAIN_MAX, max(TRAIN_PER_LIST * plan.nlist, 10_000)))
        sample = sample_rows(data, train_rows, seed, chunk_rows)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # 10 k-means iterations: recall within noise of the default 25 at 2.5x less time
        if plan.kind == "ivf_pq_refine":
            index.do_polysemous_training = False  # the refine step re-ranks; polysemous codes cost minutes
        index.train(sample)
        if plan.kind == "ivf_pq_refine":
            refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            refine.train(sample)
        del sample
    t1 = time.perf_counter()
    files: list[str] = []
    chunks = 0
    if plan.ondisk:
        out_path = Path(out)  # type: ignore[arg-type]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        ivfdata = out_path.with_name(out_path.name + ".ivfdata")
        shard_dir = Path(tempfile.mkdtemp(prefix=".shards-", dir=out_path.parent))
        shards: list[str] = []
        def add_shard(a: int, block: np.ndarray) -> None:
            shard = faiss.clone_index(index)
            shard.add_with_ids(block, np.arange(a, a + len(block), dtype=np.int64))
            name = str(shard_dir / f"s{len(shards):06d}.index")
            faiss.write_index(shard, name)
            shards.append(name)

        try:
            chunks = _add_chunks(data, chunk_rows, add_shard, refine, progress)
            if ivfdata.exists():
                ivfdata.unlink()
            from faiss.contrib.ondisk import merge_ondisk

            with _stdout_to_stderr():  # faiss printf()s "resizing ..." to stdout; keep --json clean
                merge_ondisk(index, shards, str(ivfdata))
        finally:
            for s in shards:
                Path(s).unlink(missing_ok=True)
            shard_dir.rmdir()
        if refine is not None:
            index = _refined(index, refine)
        save_index(index, out_path)
        files = [str(out_path), str(ivfdata)]
        index = load_index(out_path)
    else:
        chunks = _add_chunks(data, chunk_rows, lambda a, block: index.add(block), refine, progress)
        if refine is not None:
            index = _refined(index, refine)
        if out is not None:
            save_index(index, Path(out))
            files = [str(out)]
    t2 = time.perf_counter()
    set_search_params(index, nprobe=16, k_factor=8)
    return index, BuildReport(plan.to_dict(), n, train_rows, t1 - t0, t2 - t1, chunks, files)


def _add_chunks(data: ArrayLike, chunk_rows: int, add: Callable[[int, np.ndarray], None],
                refine: faiss.Index | None, progress: Callable[[int, int], None] | None) -> int:
    """Feed ``data`` chunk by chunk to ``add(row0, block)`` (and the refine index); returns the chunk count."""
    chunks = 0
    n = int(data.shape[0])
    for a, block in iter_chunks(data, chunk_rows):
        add(a, block)
        if refine is not None:
            refine.add(block)
        chunks += 1
        if progress:
            progress(a + len(block), n)
    return chunks


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _refined(base: faiss.Index, refine: faiss.Index) -> faiss.Index:
    """IndexRefine owning both parts (the Python wrappers hand their ownership over)."""
    out = faiss.IndexRefine(base, refine)
    out.own_fields = True
    base.this.disown()
    refine.this.disown()
    return out


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """``faiss.write_index`` through ``indexing._io.atomic_write`` (an on-disk index keeps its .ivfdata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))


def load_index(path: str | os.PathLike, mmap: bool = True) -> faiss.Index:
    """Read an index with its inverted lists memory-mapped, not loaded.

    An on-disk index (``PATH.ivfdata`` beside it) is opened with ``IO_FLAG_ONDISK_SAME_DIR``:
    its ``OnDiskInvertedLists`` always map the .ivfdata file, and the folder may have moved.
    (``IO_FLAG_MMAP`` on such a file crashes faiss 1.15.1, so it is not passed there.) An index
    written whole is opened with ``IO_FLAG_MMAP`` when ``mmap``: its lists map the index file.
    """
    path = Path(path)
    if Path(str(path) + ".ivfdata").exists():
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    else:
        flags = faiss.IO_FLAG_MMAP if mmap else 0
    try:
        with _stdout_to_stderr():  # faiss printf()s the lists file it maps; keep --json output clean
            return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise AnnError(f"index file {path} is damaged or missing its .ivfdata ({first[:120]}); rebuild the index") from None


def set_search_params(index: faiss.Index, nprobe: int | None = None, k_factor: float | None = None) -> None:
    """Set the probe count of an IVF layout and the refine over-fetch of IVF-PQ+refine."""
    if isinstance(index, faiss.IndexRefine) and k_factor is not None:
        index.k_factor = float(k_factor)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    if nprobe is not None:
        ivf.nprobe = int(min(nprobe, ivf.nlist))


# ------------------------------------------------------------------------------- measuring


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
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        _, found = index.search(np.ascontiguousarray(queries, np.float32), k)
        return 0, recall_at_k(found, truth, k)
    best = (0, 0.0)
    for p in [c for c in choices if c <= nlist] or [nlist]:
        set_search_params(index, nprobe=p, k_factor=k_factor)
        _, found = index.search(np.ascontiguousarray(queries, np.float32), k)
        best = (p, recall_at_k(found, truth, k))
        if best[1] >= target:
            break
    set_search_params(index, nprobe=best[0], k_factor=k_factor)
    return best


# ------------------------------------------------------------------------- a store's builder


class VectorColumn:
    """A store's ECG or report vectors as an array-like (``shape`` + slices) for ``build_index``.

    Duck-typed on ``store.vectors(which, slice)``, ``len(store)`` and ``store.dim``, so this module
    still imports nothing of ours.
    """

    def __init__(self, store: Any, which: str) -> None:
        self.store, self.which = store, which
        self.shape = (len(store), int(store.dim))

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(self.shape[0])
        return self.store.vectors(self.which, slice(a, b))


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
    _, truth = exact_knn(data, xq, kk + 1, chunk_rows)

    def drop_self(ids: np.ndarray) -> np.ndarray:
        out = np.full((len(ids), kk), -1, np.int64)
        for i, (row, q) in enumerate(zip(ids, rows)):
            kept = row[(row != q) & (row >= 0)][:kk]
            out[i, :len(kept)] = kept
        return out

    truth = drop_self(truth)
    try:
        nlist = int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        nlist = 0
    ladder = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p < nlist] + [nlist] if nlist else [0]
    best = (0, -1.0)
    for p in ladder:
        set_search_params(index, nprobe=p or None, k_factor=k_factor)
        r = recall_at_k(drop_self(index.search(xq, kk + 1)[1]), truth, kk)
        if r > best[1]:
            best = (p, r)
        if r >= target:
            break
    set_search_params(index, nprobe=best[0] or None, k_factor=k_factor)
    out: dict[str, Any] = {"recall_at_10": round(float(best[1]), 4), "recall_queries": len(rows)}
    if nlist:
        out["nprobe"] = int(best[0])
    return out


def store_builder(max_memory: int | None = None, *, ondisk: bool = False, seed: int = 0,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Callable[[Any, str, str], tuple[faiss.Index, dict]]:
    """An ``indexing.index_files.IndexBuilder`` for ``--factory auto``: plan by rows and budget,
    train on a sample, add the store's vectors chunk by chunk, measure held-out recall@10.

    With ``ondisk`` an IVF layout keeps its inverted lists in a ``.ivfdata`` file (memory-mapped,
    not counted in the budget), written beside the store under a temporary name;
    ``index_files.save_index`` moves it to ``STORE.<which>.faiss.ivfdata`` and records its digest.
    """

    def build(store: Any, which: str, factory: str) -> tuple[faiss.Index, dict]:
        t0 = time.perf_counter()
        column = VectorColumn(store, which)
        plan = plan_index(column.shape[0], column.shape[1], "auto", max_memory=max_memory, ondisk=ondisk)
        tmp = None
        if plan.ondisk:
            where = Path(store.path)
            tmp = where.with_name(f".{where.name}.{which}.{os.getpid()}.build.faiss")
        try:
            index, rep = build_index(column, plan, chunk_rows=chunk_rows, seed=seed, out=tmp)
        except BaseException:
            if tmp is not None:
                Path(f"{tmp}.ivfdata").unlink(missing_ok=True)
            raise
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)  # the index is in memory; its lists file stays until saved
        info: dict[str, Any] = {"factory": plan.factory, "factory_requested": factory, "dim": plan.dim,
                                "metric": "inner_product", "normalized": True, "seed": seed,
                                "faiss_version": faiss.__version__, "layout": plan.kind,
                                "memory_estimate_bytes": plan.memory_bytes, "max_index_memory": max_memory,
                                "n_rows": int(index.ntotal), "n_rows_at_build": int(index.ntotal), "on_gpu": False,
                                "ondisk_requested": bool(ondisk), "ondisk": plan.ondisk}
        if plan.nlist:
            info.update(nlist=plan.nlist, train_size=rep.train_rows, train_seconds=round(rep.train_s, 3))
        if plan.kind == "flat":
            info.update(recall_at_10=1.0, recall_exact=True)
        else:
            info.update(held_out_recall(index, column, seed=seed, chunk_rows=chunk_rows), recall_exact=False)
        if plan.kind == "ivf_pq_refine":
            info["k_factor"] = 16
        info["build_seconds"] = round(time.perf_counter() - t0, 3)
        logger.info("built %s over %d rows in %.1fs (recall@10 %.3f)", plan.factory, info["n_rows"],
                    info["build_seconds"], info["recall_at_10"])
        return index, info

    return build


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes (K/M/G/T are powers of 1024)."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(s[-1:], 1)
    num = s[:-1] if s[-1:] in "KMGT" and s[-1:] else s
    try:
        value = float(num)
    except ValueError:
        raise AnnError(f"cannot read {text!r} as a memory size; write e.g. 4G, 512M or 1073741824") from None
    if value <= 0:
        raise AnnError(f"memory size {text!r} must be positive; write e.g. 4G or 512M")
    return int(value * mult)

"""Building a FAISS index over vectors read in chunks: the one builder of the project.

- ``build_index(data, factory)``: ``data`` is any ``faiss_index.Rows`` (an ndarray, an
  ``h5py.Dataset``, a ``np.memmap``, a store's column), read ``chunk_rows`` at a time, so all vectors
  are never in memory at once. ``factory`` is ``"auto"`` (a layout planned by ``indexing.plan``
  from the rows and a memory budget: Flat, IVF-Flat, IVF-PQ with an SQ8 refine step), a planned
  kind or an ``IndexPlan``, or any faiss index-factory string ("IVF4096,PQ32", "OPQ32,IVF4096,PQ32").
  IVF layouts train on a seeded sample; on a GPU when faiss sees one (not the refine or on-disk
  layouts); with ``ondisk`` the inverted lists go through shards and
  ``faiss.contrib.ondisk.merge_ondisk`` into one ``.ivfdata`` file that queries memory-map.
- ``finish_build``: what every build records (dimension, rows, faiss version, recall@10 on held-out
  rows with nprobe tuned by ``indexing.recall``), kept in the sidecar JSON.
- ``store_builder``: the ``index_files.IndexBuilder`` of ``index``: a store's vectors in, an index out.

Above ``indexing.faiss_index``, ``indexing.plan``, ``indexing.recall`` and ``indexing.gpu``; below
``indexing.index_files``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from indexing.errors import IndexingError
from indexing.faiss_index import (DEFAULT_CHUNK_ROWS, Rows, _faiss_reason, _ivf, check_factory, iter_chunks, lists_path,
                                  normalized, read_index_file, sample_rows, set_search_params, stdout_to_stderr,
                                  write_index_file)
from indexing.gpu import UseGpu, faiss, is_gpu_index, resolve_use_gpu, to_gpu
from indexing.plan import FLAT_MAX_ROWS, KINDS, PQ_MIN_ROWS, TRAIN_MAX, TRAIN_PER_LIST, IndexPlan, PlanError, plan_index
from indexing.recall import DEFAULT_RECALL_QUERIES, DEFAULT_TARGET_RECALL, held_out_recall

logger = logging.getLogger(__name__)

_REFINE = ",Refine(SQ8)"
#: The refine over-fetch of IVF-PQ+refine that recall is measured (and saved) at.
REFINE_K_FACTOR = 16


def build_index(data: Rows, factory: str | IndexPlan = "auto", *, max_memory: int | None = None,
                ondisk: bool = False, out: str | os.PathLike | None = None,
                ivf_threshold: int = FLAT_MAX_ROWS, nlist: int | None = None, nprobe: int | None = None,
                use_gpu: UseGpu = "auto", seed: int = 0, target_recall: float = DEFAULT_TARGET_RECALL,
                recall_queries: int = DEFAULT_RECALL_QUERIES, train_size: int | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS,
                progress: Callable[[int, int], None] | None = None) -> tuple[faiss.Index, dict]:
    """Build an inner-product index whose id ``i`` is row ``i`` of ``data``.

    Args:
        data: (n, d) rows, read in chunks; each chunk is L2-normalised here if it is not unit-norm.
        factory: "auto" (``plan_index`` by rows, ``ivf_threshold`` and ``max_memory``), a planned
            kind ("flat", "ivf_flat", "ivf_pq_refine") or an ``IndexPlan``, or a faiss
            index-factory string, e.g. "Flat", "IVF1024,Flat", "IVF4096,PQ32x8".
        max_memory: RAM budget in bytes for "auto" (None: no limit).
        ondisk: keep IVF inverted lists in ``OUT.ivfdata`` (``out`` is then required); a plan says
            it itself (a planned Flat ignores it).
        out: write the index file here (with its lists file when ``ondisk``).
        ivf_threshold: rows from which "auto" builds IVF.
        nlist: IVF lists for "auto" (default ``plan.default_nlist(n)``).
        nprobe: lists probed per query; None tunes it to reach ``target_recall``.
        use_gpu: "auto", True or False.
        seed: seeds the training sample, k-means and the recall queries.
        target_recall: recall@10 vs exact search that nprobe tuning aims for.
        recall_queries: held-out rows used as queries to measure recall (0: not measured).
        train_size: training sample size (default 64 rows per list, at least 10k, at most 262k).
        chunk_rows: rows read (and added) at a time.
        progress: called with (rows added, n) after each chunk.

    Returns:
        (index, info): info holds factory, factory_requested, layout (planned kinds), dim, n_rows,
        nlist, nprobe, recall_at_10, train_size, train/add/build seconds, chunks, files, on_gpu.
    """
    t0 = time.perf_counter()
    n, d = int(data.shape[0]), int(data.shape[1])
    if n == 0:
        raise IndexingError("no vectors to index; embed some records first")
    plan = _plan(n, d, factory, max_memory, ondisk, nlist, ivf_threshold)
    spec = plan.factory if plan is not None else str(factory)
    ondisk = plan.ondisk if plan is not None else ondisk  # a planned Flat keeps no lists on disk
    check_factory(spec.removesuffix(_REFINE), d, n)
    if plan is not None and plan.kind == "ivf_pq_refine" and n < PQ_MIN_ROWS:
        raise PlanError(f"IVF-PQ needs at least {PQ_MIN_ROWS} rows to train (have {n}); use Flat or IVF-Flat")
    # the base layout; the refine step of IVF-PQ+refine is its own index, trained and filled beside it
    cpu_index = faiss.index_factory(d, spec.removesuffix(_REFINE), faiss.METRIC_INNER_PRODUCT)
    ivf = _ivf(cpu_index)
    if ondisk and ivf is None:
        raise IndexingError(f"on-disk inverted lists need an IVF index, not {spec!r}; use --factory auto or IVF...")
    if ondisk and out is None:
        raise IndexingError("an on-disk index needs the path of the index file to write (out=...)")
    refine = None
    if spec.endswith(_REFINE):
        refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        cpu_index.do_polysemous_training = False  # type: ignore[attr-defined]  # the refine step re-ranks; polysemous codes cost minutes
    info: dict[str, Any] = {"factory": spec, "factory_requested": factory.kind if isinstance(factory, IndexPlan) else factory,
                            "seed": seed, "ondisk": bool(ondisk)}
    if plan is not None:
        info.update(layout=plan.kind, memory_estimate_bytes=plan.memory_bytes, max_index_memory=max_memory)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.niter = 10  # 10 k-means iterations: recall within noise of the default 25 at 2.5x less time
        info["nlist"] = int(ivf.nlist)
    index = cpu_index
    if refine is None and not ondisk and resolve_use_gpu(use_gpu):
        index = to_gpu(cpu_index, keep_twin=False)  # cpu_index stays empty: a twin is made if a filter needs it
    source = data if isinstance(data, np.ndarray) and _unit(data) else _UnitRows(data)
    if not cpu_index.is_trained:
        ntrain = min(n, train_size or min(TRAIN_MAX, max(TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 256), 10_000)))
        t_train = time.perf_counter()
        sample = sample_rows(source, ntrain, seed, chunk_rows)
        try:
            index.train(sample)
            if refine is not None:
                refine.train(sample)
        except RuntimeError as e:  # whatever check_factory cannot foresee, still as one line
            raise IndexingError(f"faiss could not train {spec!r} on {ntrain} rows ({_faiss_reason(e)}); "
                                "use --factory auto, or fewer IVF lists / PQ codes") from None
        del sample
        info.update(train_size=int(ntrain), train_seconds=round(time.perf_counter() - t_train, 3))
    t_add = time.perf_counter()
    if ondisk:
        index, chunks = _add_ondisk(index, source, Path(out), refine, chunk_rows, progress)  # type: ignore[arg-type]
    else:
        chunks = _add_chunks(source, chunk_rows, lambda a, block: index.add(block), refine, progress)
        if refine is not None:
            index = _refined(index, refine)
        if out is not None:
            write_index_file(index, out)
    files = [] if out is None else [str(out), str(lists_path(out))] if ondisk else [str(out)]
    info.update(add_seconds=round(time.perf_counter() - t_add, 3), chunks=chunks, files=files)
    if refine is not None:
        set_search_params(index, k_factor=REFINE_K_FACTOR)
        info["k_factor"] = REFINE_K_FACTOR
    exact = ivf is None and spec == "Flat"
    finish_build(index, source, info, t0, exact=exact, nprobe=nprobe, target=target_recall, nq=recall_queries,
                 chunk_rows=chunk_rows)
    return index, info


def _plan(n: int, d: int, factory: str | IndexPlan, max_memory: int | None, ondisk: bool, nlist: int | None,
          ivf_threshold: int) -> IndexPlan | None:
    """The ``IndexPlan`` a factory stands for (None for a faiss factory string)."""
    if isinstance(factory, IndexPlan):
        if (n, d) != (factory.n, factory.dim):
            raise PlanError(f"the plan is for {factory.n} x {factory.dim} but the data is {n} x {d}; plan again")
        return factory
    if factory != "auto" and factory not in KINDS:
        if max_memory is not None:
            raise IndexingError("a memory budget applies to factory 'auto'; drop one of the two")
        return None
    return plan_index(n, d, factory, max_memory=max_memory, ondisk=ondisk, nlist=nlist, flat_max_rows=ivf_threshold)


def _unit(x: np.ndarray) -> bool:
    return x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous and normalized(x) is x


class _UnitRows:
    """``data`` with each slice read as float32, C-contiguous, unit-norm rows."""

    def __init__(self, data: Rows) -> None:
        self.data, self.shape = data, tuple(data.shape)

    def __getitem__(self, key: slice) -> np.ndarray:
        return normalized(np.asarray(self.data[key]))


def _add_chunks(data: Rows, chunk_rows: int, add: Callable[[int, np.ndarray], None],
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


def _add_ondisk(index: faiss.Index, data: Rows, out: Path, refine: faiss.Index | None, chunk_rows: int,
                progress: Callable[[int, int], None] | None) -> tuple[faiss.Index, int]:
    """Add ``data`` as shards of one chunk each, merged into ``OUT.ivfdata``; the index written to
    ``out`` and read back with its lists memory-mapped."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ivfdata = lists_path(out)
    shard_dir = Path(tempfile.mkdtemp(prefix=".shards-", dir=out.parent))
    shards: list[str] = []

    def add_shard(a: int, block: np.ndarray) -> None:
        shard = faiss.clone_index(index)
        shard.add_with_ids(block, np.arange(a, a + len(block), dtype=np.int64))
        shards.append(str(shard_dir / f"s{len(shards):06d}.index"))
        faiss.write_index(shard, shards[-1])

    try:
        chunks = _add_chunks(data, chunk_rows, add_shard, refine, progress)
        ivfdata.unlink(missing_ok=True)
        from faiss.contrib.ondisk import merge_ondisk

        with stdout_to_stderr():  # faiss printf()s "resizing ..." to stdout; keep --json clean
            merge_ondisk(index, shards, str(ivfdata))
    finally:
        for s in shards:
            Path(s).unlink(missing_ok=True)
        shard_dir.rmdir()
    write_index_file(_refined(index, refine) if refine is not None else index, out)
    return read_index_file(out), chunks


def _refined(base: faiss.Index, refine: faiss.Index) -> faiss.Index:
    """IndexRefine owning both parts (the Python wrappers hand their ownership over)."""
    out = faiss.IndexRefine(base, refine)
    out.own_fields = True
    base.this.disown()  # type: ignore[attr-defined]  # SWIG's ownership handle, absent from faiss's stub
    refine.this.disown()  # type: ignore[attr-defined]
    return out


def finish_build(index: faiss.Index, data: Rows, info: dict, t0: float, *, exact: bool,
                 nprobe: int | None = None, target: float = DEFAULT_TARGET_RECALL,
                 nq: int = DEFAULT_RECALL_QUERIES, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """What every build records once the rows are in, beside what ``build_index`` put in ``info``:
    dimension, metric, faiss version, row counts, GPU or not, recall@10 (1.0 when ``exact``, else
    measured on ``nq`` held-out rows by ``recall.held_out_recall``, which also tunes nprobe; not
    measured when ``nq`` is 0), the build time; logged. Returns ``info``."""
    info.update(dim=int(index.d), metric="inner_product", normalized=True, faiss_version=faiss.__version__,
                n_rows=int(index.ntotal), n_rows_at_build=int(index.ntotal), on_gpu=is_gpu_index(index))
    if exact:
        info.update(recall_at_10=1.0, recall_exact=True)
    elif nq > 0:  # seed + 1: other rows than the training sample drawn with ``seed``
        info.update(held_out_recall(index, data, nq=nq, seed=int(info["seed"]) + 1, target=target, nprobe=nprobe,
                                    chunk_rows=chunk_rows))
    elif nprobe:
        set_search_params(index, nprobe=nprobe)
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("built %s over %d x %d in %.1fs (recall@10 %s%s)", info["factory"], info["n_rows"], info["dim"],
                info["build_seconds"], info.get("recall_at_10", "not measured"),
                f", nprobe {info['nprobe']}" if "nprobe" in info else "")
    return info


# ----------------------------------------------------------------------------- a store's builder


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


def store_builder(*, max_memory: int | None = None, ondisk: bool = False, use_gpu: UseGpu = "auto",
                  ivf_threshold: int = FLAT_MAX_ROWS, nprobe: int | None = None, seed: int = 0,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Callable[[Any, str, str], tuple[faiss.Index, dict]]:
    """The ``indexing.index_files.IndexBuilder`` of ``index``: ``build_index`` over the store's
    ``which`` vectors, streamed from the store in chunks, for the factory asked ("auto": planned by
    rows and ``max_memory``).

    With ``ondisk`` an IVF layout keeps its inverted lists in a ``.ivfdata`` file (memory-mapped,
    not counted in the budget), written beside the store under a temporary name;
    ``index_files.save_index`` moves it to ``STORE.<which>.faiss.ivfdata`` and records its digest.
    """

    def build(store: Any, which: str, factory: str) -> tuple[faiss.Index, dict]:
        column = VectorColumn(store, which)
        plan = _plan(column.shape[0], column.shape[1], factory, max_memory, ondisk, None, ivf_threshold)
        lists = plan.ondisk if plan is not None else ondisk
        tmp = None
        if lists:
            where = Path(store.path)
            remove_build_leftovers(where, which)
            tmp = where.with_name(f".{where.name}.{which}.{os.getpid()}.build.faiss")
        try:
            # 200 held-out rows, not the library's 500: exact search streams over a store of millions
            index, info = build_index(column, plan or factory, ondisk=lists, out=tmp, max_memory=max_memory,
                                      use_gpu=use_gpu, nprobe=nprobe, seed=seed, recall_queries=200,
                                      chunk_rows=chunk_rows)
        except BaseException:
            if tmp is not None:
                lists_path(tmp).unlink(missing_ok=True)
            raise
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)  # the index is in memory; its lists file stays until saved
        info.update(factory_requested=factory, ondisk_requested=bool(ondisk), max_index_memory=max_memory)
        info.pop("files", None)  # the temporary paths; save_index records the files it writes
        return index, info

    return build


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_build_leftovers(store_path: Path, which: str) -> list[Path]:
    """Remove the temporary lists files (``.STORE.<which>.<pid>.build.faiss.ivfdata``) of on-disk
    builds whose process is gone (killed mid-build: its ``finally`` never ran); returns them."""
    removed = []
    for p in store_path.parent.glob(f".{store_path.name}.{which}.*.build.faiss*"):
        pid = p.name[len(f".{store_path.name}.{which}."):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        logger.warning("removed %d leftover file(s) of an interrupted index build: %s", len(removed),
                       ", ".join(p.name for p in removed))
    return removed

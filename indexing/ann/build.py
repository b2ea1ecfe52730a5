"""Building, saving and loading a planned index, streamed from an array-like source.

``build_index`` trains an ``IndexPlan``'s layout on a sample (``faiss_index.sample_rows``) and adds
rows in chunks read from a ``faiss_index.Rows`` source (an ``h5py.Dataset``, a ``np.memmap`` or
anything with ``shape`` and slice indexing), so all vectors are never in memory at once. With
``ondisk`` the inverted lists are written through shards and ``faiss.contrib.ondisk.merge_ondisk``
into one ``.ivfdata`` file that ``load_index`` memory-maps at query time (opened, as every index
file is, by ``index_files.read_faiss``). ``write_faiss_file`` writes through ``indexing._io``
(``indexing.index_files.save_index`` is the store's: it adds the sidecar and the digests).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexing._io import atomic_write
from indexing.ann.plan import TRAIN_MAX, TRAIN_PER_LIST, AnnError, IndexPlan
from indexing.faiss_index import DEFAULT_CHUNK_ROWS, Rows, _ivf_attr, _set_nprobe, iter_chunks, sample_rows
from indexing.index_files import lists_path, read_faiss, stdout_to_stderr

logger = logging.getLogger("indexing.ann")

# ------------------------------------------------------------------------------------ building


@dataclass
class BuildReport:
    plan: dict[str, Any]
    rows: int
    train_rows: int
    train_s: float
    add_s: float
    chunks: int
    files: list[str]


def build_index(data: Rows, plan: IndexPlan, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
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
    # the base layout; the refine step of IVF-PQ+refine is its own index, trained and filled beside it
    index = faiss.index_factory(dim, plan.factory.removesuffix(",Refine(SQ8)"), faiss.METRIC_INNER_PRODUCT)
    refine: faiss.Index | None = None
    train_rows = 0
    if plan.kind != "flat":
        train_rows = min(n, train_size or min(TRAIN_MAX, max(TRAIN_PER_LIST * plan.nlist, 10_000)))
        sample = sample_rows(data, train_rows, seed, chunk_rows)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # 10 k-means iterations: recall within noise of the default 25 at 2.5x less time
        if plan.kind == "ivf_pq_refine":
            # the refine step re-ranks; polysemous codes cost minutes (index_factory returns the concrete
            # IndexIVFPQ, which faiss's stub types as the base Index)
            index.do_polysemous_training = False  # type: ignore[attr-defined]
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
        ivfdata = lists_path(out_path)
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

            with stdout_to_stderr():  # faiss printf()s "resizing ..." to stdout; keep --json clean
                merge_ondisk(index, shards, str(ivfdata))
        finally:
            for s in shards:
                Path(s).unlink(missing_ok=True)
            shard_dir.rmdir()
        if refine is not None:
            index = _refined(index, refine)
        write_faiss_file(index, out_path)
        files = [str(out_path), str(ivfdata)]
        index = load_index(out_path)
    else:
        chunks = _add_chunks(data, chunk_rows, lambda a, block: index.add(block), refine, progress)
        if refine is not None:
            index = _refined(index, refine)
        if out is not None:
            write_faiss_file(index, Path(out))
            files = [str(out)]
    t2 = time.perf_counter()
    set_search_params(index, nprobe=16, k_factor=8)
    return index, BuildReport(plan.to_dict(), n, train_rows, t1 - t0, t2 - t1, chunks, files)


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


def _refined(base: faiss.Index, refine: faiss.Index) -> faiss.Index:
    """IndexRefine owning both parts (the Python wrappers hand their ownership over)."""
    out = faiss.IndexRefine(base, refine)
    out.own_fields = True
    base.this.disown()  # type: ignore[attr-defined]  # SWIG's ownership handle, absent from faiss's stub
    refine.this.disown()  # type: ignore[attr-defined]
    return out


def write_faiss_file(index: faiss.Index, path: str | os.PathLike) -> None:
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
    An unreadable file raises ``IndexStaleError`` naming it and ``--rebuild-index``, as a store's does.
    """
    path = Path(path)
    if lists_path(path).exists():
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    else:
        flags = faiss.IO_FLAG_MMAP if mmap else 0
    return read_faiss(path, flags)


def set_search_params(index: faiss.Index, nprobe: int | None = None, k_factor: float | None = None) -> None:
    """Set the probe count of an IVF layout and the refine over-fetch of IVF-PQ+refine."""
    if isinstance(index, faiss.IndexRefine) and k_factor is not None:
        index.k_factor = float(k_factor)
    nlist = _ivf_attr(index, "nlist")
    if nlist is not None and nprobe is not None:
        _set_nprobe(index, int(min(nprobe, nlist)))

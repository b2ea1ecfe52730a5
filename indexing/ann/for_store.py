"""The builder ``index --factory auto`` hands to ``indexing.index_files``: a store's vectors in, an index out.

``VectorColumn`` presents a store's ECG or report vectors as an array-like; ``store_builder``
plans by rows and budget, builds, and records the build as ``indexing.build.build_index`` does
(``finish_build``: held-out recall@10 with nprobe tuned, for the sidecar).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexing.ann.build import build_index, set_search_params
from indexing.ann.plan import plan_index
from indexing.build import finish_build
from indexing.faiss_index import DEFAULT_CHUNK_ROWS

logger = logging.getLogger("indexing.ann")


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
            remove_build_leftovers(where, which)
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
        info: dict[str, Any] = {"factory": plan.factory, "factory_requested": factory, "seed": seed,
                                "layout": plan.kind, "memory_estimate_bytes": plan.memory_bytes,
                                "max_index_memory": max_memory, "ondisk_requested": bool(ondisk), "ondisk": plan.ondisk}
        if plan.nlist:
            info.update(nlist=plan.nlist, train_size=rep.train_rows, train_seconds=round(rep.train_s, 3))
        if plan.kind == "ivf_pq_refine":
            set_search_params(index, k_factor=16)  # the refine over-fetch recall is measured (and saved) at
            info["k_factor"] = 16
        # 200 held-out rows, not build_index's 500: exact search streams over a store of millions
        finish_build(index, column, info, t0, exact=plan.kind == "flat", nq=200, chunk_rows=chunk_rows)
        return index, info

    return build

"""The builder ``index --factory auto`` hands to ``indexing.index_files``: a store's vectors in, an index out.

``VectorColumn`` presents a store's ECG or report vectors as an array-like; ``store_builder``
plans by rows and budget, builds, and measures held-out recall@10 for the sidecar.
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

from indexing.ann.build import DEFAULT_CHUNK_ROWS, build_index
from indexing.ann.plan import plan_index
from indexing.ann.recall import held_out_recall

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

"""``index`` under torchrun: each rank embeds its own shard into a shard store, rank 0 merges them.

Shard of rank ``r`` of ``w``: the records whose position in the source's (deterministic) reading
order is ``r`` mod ``w``. Each rank appends to its own store ``STORE.rank<r>-of-<w>`` (its own
writer lock, so ranks never wait on each other's lock), skipping ids that the main store or its
shard store already hold: a killed rank resumes its own shard. After a barrier, rank 0 (which holds
the main store's lock for the whole run) copies the shard rows into the main store in source order,
so the main store lists the same ids in the same order as one process writes them, then compacts,
builds the indexes and deletes the merged shard stores.

Multi-node is torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here knows nodes,
but the shard stores must sit on a filesystem every node sees (the folder of ``--store``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from etp_search.export.source import Batch
from etp_search.export.writer import CHECKED_FIELDS, StoreWriter
from indexing.store import EmbeddingStore

logger = logging.getLogger(__name__)

#: Test hook: "R:N" makes rank R leave with ``os._exit(1)`` right after writing its N-th batch
#: (a rank killed mid-run, as SIGKILL or a lost node would).
DIE_ENV = "ETP_INDEX_TEST_DIE_AFTER"

MERGE_BATCH = 1024


def shard_path(store: Path, rank: int, world: int) -> Path:
    return store.with_name(f"{store.name}.rank{rank}-of-{world}")


def shard_positions(n: int, rank: int, world: int) -> list[int]:
    """Positions (in the source's reading order) that rank ``rank`` of ``world`` embeds."""
    return list(range(rank, n, world))


def existing_shards(store: Path) -> list[Path]:
    """Shard stores of ``store`` left by this or an earlier torchrun (any world size)."""
    pat = re.compile(rf"^{re.escape(store.name)}\.rank(\d+)-of-(\d+)$")
    found = [p for p in store.parent.glob(f"{store.name}.rank*-of-*") if pat.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: tuple(int(g) for g in pat.match(p.name).groups()[::-1]))  # type: ignore[union-attr]


def remove_store_files(path: Path) -> None:
    """Delete a store's main file, part files and lock file."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    shutil.rmtree(Path(str(path) + ".parts"), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        Path(str(path) + ".lock").unlink()


def die_hook(rank: int) -> int | None:
    spec = os.environ.get(DIE_ENV, "")
    if not spec:
        return None
    r, n = spec.split(":")
    return int(n) if int(r) == rank else None


def merge_shards(main: StoreWriter, shards: Iterable[Path], order: list[str]) -> int:
    """Append every shard row whose id the main store lacks, in ``order`` (the source's ids);
    returns the rows appended. Rows of ids not in ``order`` (a changed source) come last, by id.

    Raises:
        ProvenanceMismatchError: a shard store made by another checkpoint or preset than the main store.
    """
    expected = {k: main.store.provenance.get(k) for k in CHECKED_FIELDS}
    opened: list[EmbeddingStore] = []
    try:
        for p in shards:
            opened.append(EmbeddingStore.open(p))
            opened[-1].check_provenance(expected)
        where: dict[str, tuple[int, int]] = {}
        for k, s in enumerate(opened):
            ids = s.ids
            for row in np.flatnonzero(~main.stored(ids)).tolist():
                where.setdefault(ids[row], (k, row))
        rank_of = {rid: i for i, rid in enumerate(order)}
        todo = sorted(where, key=lambda rid: (rank_of.get(rid, len(order)), rid))
        written = 0
        for s0 in range(0, len(todo), MERGE_BATCH):
            chunk = todo[s0:s0 + MERGE_BATCH]
            # One read per shard for the chunk, then rows put back in source order.
            by_shard: dict[int, list[int]] = {}
            for j, rid in enumerate(chunk):
                by_shard.setdefault(where[rid][0], []).append(j)
            ecg = np.empty((len(chunk), main.store.dim), np.float32)
            text = np.empty((len(chunk), main.store.dim), np.float32)
            texts: list[Any] = [None] * len(chunk)
            labels: list[Any] = [None] * len(chunk)
            metas: list[dict[str, Any]] = [{} for _ in chunk]
            for k, js in by_shard.items():
                s = opened[k]
                rows = np.array([where[chunk[j]][1] for j in js], dtype=np.int64)
                ecg[js] = s.ecg(rows)
                text[js] = s.text(rows)
                cols = {c: s.meta(c, rows) for c in s.meta_columns}
                for i, (j, t, lab) in enumerate(zip(js, s.texts(rows), s.labels(rows))):
                    texts[j], labels[j] = t, lab
                    metas[j] = {c: _py(v[i]) for c, v in cols.items()}
            batch = Batch(chunk, np.empty((len(chunk), 12, 0), np.float32), texts, labels, metas)
            written += main.write(batch, ecg, text)
        return written
    finally:
        for s in opened:
            s.close()


def collective_device() -> str:
    """Where tensors for collectives live: the rank's GPU under NCCL, the CPU under gloo."""
    import torch
    import torch.distributed as dist

    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v

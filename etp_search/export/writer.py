"""Writer stage: whole batches into the embedding store, then the FAISS indexes brought up to date."""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Iterator, Sequence, Set
from typing import Any, Mapping

import numpy as np

from etp_search.export.source import META_SCHEMA, NORM_COLUMN, Batch
from indexing.gpu import UseGpu
from indexing.build import store_builder
from indexing.index_files import IndexBuilder, build_or_update
from indexing.store import EmbeddingStore

logger = logging.getLogger(__name__)

#: Provenance fields that must match between a store and the model/preset that append to it.
CHECKED_FIELDS = ("checkpoint_sha256", "preset", "text_source", "embed_dim")


class StoreWriter:
    """Open (or create) a store for appending, refusing one written by another model or preset.

    Args:
        path: Store file.
        dim: Embedding dimension.
        provenance: How the vectors are made (see ``runner.provenance_for``).
        rebuild: Start the store afresh instead of appending to it.
    """

    def __init__(self, path: str | Path, dim: int, provenance: Mapping[str, Any], rebuild: bool = False):
        self.path = Path(path)
        if self.path.exists() and not rebuild:
            self.store = EmbeddingStore.open(self.path)
            self.store.check_provenance({k: provenance.get(k) for k in CHECKED_FIELDS})
        else:
            self.store = EmbeddingStore.create(self.path, dim, dict(provenance), META_SCHEMA, unit_norm=True,
                                               overwrite=rebuild)
        try:
            # The lock is held from here to close(): the ids already stored are read under it, so a
            # second `index` started meanwhile either waits its turn in the error it gets or sees
            # these rows; two runs can never both decide a record is new.
            self.store.begin_write()
        except BaseException:
            self.store.close()
            raise
        # Which ids are stored is asked of the store's id map (built once, from one chunked read of
        # the ids, on the first ask, under the lock; extended by our own appends), not of a set of
        # our own: that read every id a second time and held 5M Python strings.
        self.done_ids = StoredIds(self.store)
        self.written = 0

    def stored(self, ids: Sequence[str]) -> np.ndarray:
        """Boolean mask: which of ``ids`` the store holds already (one vectorised lookup)."""
        return self.store.contains(ids)

    def write(self, batch: Batch, ecg: np.ndarray, text: np.ndarray) -> int:
        """Append the rows of ``batch`` not yet stored; returns how many were written."""
        have = self.stored(batch.ids)
        # Ids repeated inside one batch keep their first occurrence.
        seen: set[str] = set()
        keep: list[int] = []
        for i, rid in enumerate(batch.ids):
            if not have[i] and rid not in seen:
                seen.add(rid)
                keep.append(i)
        if not keep:
            return 0
        ids = [batch.ids[i] for i in keep]
        # A store made before the ECG norm was stored has no column for it: its rows go without (the
        # probe then reads the unit vectors, as it did); every other column must be the store's.
        cols = [c for c in batch.meta[0] if c != NORM_COLUMN or c in self.store.meta_schema]
        meta = {col: [batch.meta[i][col] for i in keep] for col in cols}
        self.store.append(ids, ecg[keep], text[keep], texts=[batch.texts[i] for i in keep],
                          labels=[batch.labels[i] for i in keep], meta=meta)
        self.written += len(ids)
        return len(ids)

    def finish(self, *, build_index: bool = True, factory: str = "auto", rebuild_index: bool = False,
               use_gpu: UseGpu = "auto", builder: IndexBuilder | None = None,
               max_index_memory: int | None = None, ondisk_lists: bool = False) -> dict[str, Any]:
        """Fold appended parts into the main file and build or extend, then save, the ECG and report
        indexes (queries only read them). ``builder`` replaces how a new index is made; it defaults
        to ``indexing.build.store_builder`` (vectors streamed from the store in chunks; for "auto"
        a layout by rows and ``max_index_memory``; IVF lists in ``STORE.<which>.faiss.ivfdata``
        when ``ondisk_lists``; on a GPU when ``use_gpu`` finds one)."""
        if ondisk_lists and factory != "auto":
            from indexing.errors import IndexingError

            raise IndexingError("on-disk inverted lists apply to --factory auto; drop --ondisk-lists or the factory")
        if builder is None:
            builder = store_builder(max_memory=max_index_memory, ondisk=ondisk_lists, use_gpu=use_gpu)
        if self.written:
            self.store.compact()
        out: dict[str, Any] = {"rows": len(self.store)}
        if build_index and len(self.store):
            for which in ("ecg", "text"):
                _, info = build_or_update(self.store, which, factory=factory, rebuild=rebuild_index,
                                          use_gpu=use_gpu, builder=builder,
                                          ondisk=bool(ondisk_lists) if factory == "auto" else None)
                out[f"{which}_index"] = {k: info.get(k) for k in ("factory", "n_rows", "recall_at_10", "nprobe", "on_gpu")}
        return out

    def close(self) -> None:
        self.store.close()


class StoredIds(Set):
    """The record ids of a store, as a read-only set that asks the store's id map (``in``, ``len``,
    ``todo``) instead of holding a copy; iterating reads every id (avoid it on big stores)."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store

    def __contains__(self, rid: object) -> bool:
        return self.store.find_rows([str(rid)])[0] >= 0

    def mask(self, ids: Sequence[str]) -> np.ndarray:
        """``[rid in self for rid in ids]`` in one vectorised lookup."""
        return self.store.contains(ids)

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.ids)

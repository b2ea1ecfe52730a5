"""Read-only search over a store's vectors: the saved index for the rows it covers, exact search for the rest.

A query never writes: ``SearchView.open`` loads ``STORE.{ecg,text}.faiss`` when its sidecar checks
out (uuid, which vectors, size, SHA-256) and searches the rows the index covers in FAISS and the
rows appended since (the store's *tail*, which an ``index`` run in progress is still writing) by
exact inner product over vectors read once from the store. A missing, damaged or foreign index
makes the whole store the tail, with one warning naming ``--rebuild-index``; the answer is the same,
only slower. Row filters are sized to the rows the view covers, so a store that grows under the
view cannot shift them.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from indexing.errors import IndexingError, IndexStaleError
from indexing.faiss_index import normalized, search
from indexing.gpu import UseGpu
from indexing.index_files import IndexAheadError, _check_which, default_index_path, load_index

logger = logging.getLogger(__name__)


class SearchView:
    """Search rows ``0..n`` of one kind of vectors: FAISS for ``0..n_indexed``, exact for the tail.

    Build with ``SearchView.open(store, which)``; ``grown(store)`` gives a view over a store that
    has more rows, sharing the same index object (nothing is copied or rebuilt).
    """

    def __init__(self, store: Any, which: str, index: Any | None = None, info: dict | None = None,
                 note: str | None = None):
        self.store = store
        self.which = which
        self.index = index
        self.info: dict = dict(info or {})
        self.n = len(store)
        self.n_indexed = int(index.ntotal) if index is not None else 0
        if self.n_indexed > self.n:
            raise IndexingError(f"the index holds {self.n_indexed} rows but the store view has {self.n}")
        #: Why the view searches the whole store exactly (None when it has an index).
        self.note = note
        self._tail: np.ndarray | None = None
        self._tail_prefix: np.ndarray | None = None  # tail rows a smaller view already read
        self._tail_lock = threading.Lock()

    @classmethod
    def open(cls, store: Any, which: str = "ecg", index_path: str | os.PathLike | None = None, *,
             use_gpu: UseGpu = False) -> SearchView:
        """The view over ``store`` as it is now; never writes a file."""
        _check_which(which)
        if which == "text" and not store.has_text:
            raise IndexingError(f"store {store.path} holds no report vectors; search ECGs instead")
        store.check_not_empty()
        path = Path(index_path) if index_path else default_index_path(store.path, which)
        for attempt in range(2):
            try:
                index, info = load_index(path, store.uuid, len(store), which=which, allow_behind=True,
                                         use_gpu=use_gpu)
                return cls(store, which, index, info)
            except IndexAheadError as e:
                if attempt == 0:
                    store.refresh()  # the writer appended and saved after this store was opened
                    continue
                reason = str(e)
            except IndexStaleError as e:
                reason = str(e)
        logger.warning("%s; meanwhile this search reads all %d %s vectors from the store (same results, slower)",
                       reason, len(store), which)
        return cls(store, which, None, {"factory": "exact (no usable index)", "n_rows": len(store),
                                        "recall_at_10": 1.0}, note=reason)

    def grown(self, store: Any) -> SearchView:
        """A view of ``store`` (the same store, reopened with more rows) over the same index."""
        if store.uuid != self.store.uuid or len(store) < self.n:
            raise IndexingError("a grown view needs the same store with at least as many rows")
        view = SearchView(store, self.which, self.index, self.info, self.note)
        if self._tail is not None and self.n_indexed == view.n_indexed:
            view._tail_prefix = self._tail  # rows already read need not be read again
        return view

    @property
    def summary(self) -> dict:
        """factory, rows covered, rows searched exactly, recall@10 of the indexed part."""
        return {"factory": self.info.get("factory"), "n_rows": self.n, "n_indexed": self.n_indexed,
                "n_tail": self.n - self.n_indexed, "recall_at_10": self.info.get("recall_at_10"),
                "nprobe": self.info.get("nprobe"), "on_gpu": bool(self.info.get("on_gpu", False))}

    # ---------------------------------------------------------------- search

    def prepare(self) -> None:
        """Read the tail's vectors now (callers that serialise store reads call this under their lock)."""
        if self.n > self.n_indexed:
            self._tail_vectors()

    def _tail_vectors(self) -> np.ndarray:
        with self._tail_lock:
            if self._tail is None:
                prefix = self._tail_prefix
                have = 0 if prefix is None else len(prefix)
                new = normalized(self.store.vectors(self.which, slice(self.n_indexed + have, self.n)))
                self._tail = new if prefix is None else np.concatenate([prefix, new])
            return self._tail

    def _mask(self, allowed_rows: Any) -> np.ndarray | None:
        if allowed_rows is None:
            return None
        allowed = np.asarray(allowed_rows)
        if allowed.dtype == bool:
            if allowed.shape[0] < self.n:
                raise IndexingError(f"the row filter has {allowed.shape[0]} entries for a view of {self.n} rows")
            return allowed[:self.n]  # a store re-scanned meanwhile may hold rows this view does not
        rows = allowed.astype(np.int64).ravel()
        mask = np.zeros(self.n, dtype=bool)
        mask[rows[(rows >= 0) & (rows < self.n)]] = True
        return mask

    def search(self, queries: np.ndarray, k: int, allowed_rows: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by cosine among ``allowed_rows`` (bool mask or rows), best first, no -1 rows."""
        q = normalized(np.atleast_2d(queries))
        mask = self._mask(allowed_rows)
        parts_s, parts_r = [], []
        if self.index is not None and self.n_indexed:  # n_indexed > 0 only with an index
            head = None if mask is None else mask[:self.n_indexed]
            if head is None or head.any():
                s, r = search(self.index, q, k, head)
                parts_s.append(s)
                parts_r.append(r)
        if self.n > self.n_indexed:
            tail = self._tail_vectors()
            if q.shape[1] != tail.shape[1]:
                raise IndexingError(f"query vectors have dimension {q.shape[1]} but the store has {tail.shape[1]}; "
                                    "use the checkpoint the store was built with")
            scores = q @ tail.T
            if mask is not None:
                scores[:, ~mask[self.n_indexed:]] = -np.inf
                n_ok = int(mask[self.n_indexed:].sum())
            else:
                n_ok = tail.shape[0]
            kk = min(k, n_ok)
            if kk > 0:
                top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < tail.shape[0] else \
                    np.broadcast_to(np.arange(tail.shape[0]), (q.shape[0], tail.shape[0]))
                s = np.take_along_axis(scores, top, axis=1)
                parts_s.append(s.astype(np.float32))
                parts_r.append((top + self.n_indexed).astype(np.int64))
        if not parts_s:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        s = np.concatenate(parts_s, axis=1)
        r = np.concatenate(parts_r, axis=1)
        order = np.lexsort((r, -s), axis=-1)[:, :k]  # by score, ties by row (as exact FAISS orders them)
        return np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)

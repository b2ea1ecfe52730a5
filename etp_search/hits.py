"""What a search result shows: ``Hit`` (one row: id, score, labels, report, metadata) and
``ColumnCache`` (those columns and the ECG vectors held in memory, for a server answering many)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from indexing.store import EmbeddingStore

#: Metadata columns every hit carries (when the store has them).
HIT_COLUMNS = ("age", "sex", "strat_fold", "source")
#: ECG vectors are held in memory by a column cache only up to this many bytes (else read per query).
VECTOR_CACHE_BYTES = 512 * 2**20


@dataclass
class Hit:
    """One search result: a store row with its id, cosine score, labels, report and metadata."""

    rank: int
    row: int
    id: str
    score: float
    labels: dict[str, float]
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "score": round(self.score, 6), "labels": self.labels,
                "report": self.text, "row": self.row, **self.meta}


class ColumnCache:
    """What a hit shows (reports, labels, hit metadata) and the ECG vectors, held in memory.

    A hit read from the store costs four HDF5 reads (~1.2 ms for 10 hits on this project's machine,
    more than the FAISS search); a server answers many, so it reads the columns once. ``grown``
    gives the cache of the same store with more rows: it reads only the new rows and shares the
    lists (appended to, never changed), so a cache of fewer rows stays valid for its own rows.
    Memory: ~the reports' size plus 8 bytes a row per column (ECG vectors only under
    ``VECTOR_CACHE_BYTES``).
    """

    def __init__(self, store: EmbeddingStore, _shared: dict | None = None):
        self.store = store
        self._shared = _shared if _shared is not None else {
            "texts": [], "labels": [], "meta": {}, "ecg": None, "lock": threading.Lock()}
        self.cols = [c for c in HIT_COLUMNS if c in store.meta_columns]
        sh = self._shared
        with sh["lock"]:
            have, n = len(sh["texts"]), len(store)
            if n > have:
                sl = slice(have, n)
                sh["texts"].extend(store.texts(sl))
                sh["labels"].extend(store.labels_json(sl))
                for c in self.cols:
                    vals = store.meta(c, sl)
                    sh["meta"].setdefault(c, []).extend(vals.tolist() if isinstance(vals, np.ndarray) else vals)
                sh["ecg"] = self._grow_vectors(sh["ecg"], store, have, n)
        self.n = n
        self.texts, self.labels_json, self.meta = sh["texts"], sh["labels"], sh["meta"]
        self.ecg = sh["ecg"]

    @staticmethod
    def _grow_vectors(buf: np.ndarray | None, store: EmbeddingStore, have: int, n: int) -> np.ndarray | None:
        if n * store.dim * 4 > VECTOR_CACHE_BYTES or (buf is None and have):
            return None
        if buf is None or buf.shape[0] < n:  # rows below `have` stay where older caches see them
            new = np.empty((max(n, 2 * have, 64), store.dim), np.float32)
            if buf is not None:
                new[:have] = buf[:have]
            buf = new
        buf[have:n] = store.ecg(slice(have, n))
        return buf

    def grown(self, store: EmbeddingStore) -> ColumnCache:
        """The cache of ``store``: this store reopened with at least as many rows."""
        if store.uuid != self.store.uuid or len(store) < self.n:
            return ColumnCache(store)
        return ColumnCache(store, self._shared)

    def ecg_vector(self, row: int) -> np.ndarray:
        return self.ecg[row:row + 1].copy() if self.ecg is not None else self.store.ecg(np.array([row]))

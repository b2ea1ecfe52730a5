"""Record id -> row map of a store, held in numpy arrays instead of a Python dict (issue 13).

A dict of 5M ``bytes -> int`` entries took 7.8 s and 658 MB to build (a Python object per id and
per row number). This map keeps

* ``keys``: the ids as fixed-width UTF-8 bytes (numpy ``S``), in row order;
* ``hashes`` / ``rows``: a 64-bit hash of every key, sorted, with the row it came from;
* a small dict for the last few appended rows (an append of a few ids costs O(batch), not a
  re-sort), folded into the arrays once it grows past 1/16 of them (amortised linear).

A lookup hashes the asked ids in one vectorised pass, finds them with ``np.searchsorted`` and
confirms each candidate against ``keys`` (so a hash collision can never return a wrong row).
Building it is a chunked read of the ids, one hashing pass and one ``argsort`` of uint64s: at 5M
rows ~120 MB (8 bytes of hash + 8 of row + the id's width a row). Ids cannot hold NUL bytes (HDF5
variable-length strings refuse them), so numpy's NUL-padded ``S`` keys lose nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Appended rows kept in the dict before it is folded into the arrays (at least).
FOLD_MIN = 1 << 16
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = 0x9E3779B97F4A7C15


def as_keys(ids: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """Ids (bytes, or str encoded as UTF-8) as a numpy ``S`` array."""
    arr = ids if isinstance(ids, np.ndarray) else np.array(ids, dtype=object)
    if arr.dtype.kind != "S":
        try:  # bytes objects (what h5py reads) and ASCII str convert in C
            arr = arr.astype("S")
        except (UnicodeEncodeError, TypeError, ValueError):
            arr = np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.tolist()], dtype="S")
    if arr.dtype.itemsize == 0:  # np.array([b""]) is S1 already; keep the guard for empty inputs
        arr = arr.astype("S1")
    return arr


_MASK = (1 << 64) - 1


def hash_key(key: bytes) -> int:
    """``hash_keys`` of one key in plain Python (a single lookup without numpy's per-call cost)."""
    key = key.rstrip(b"\0")
    key += b"\0" * (-len(key) % 8)
    h = 0
    for j in range(len(key) // 8):
        x = (int.from_bytes(key[8 * j:8 * j + 8], "little") * (((j + 1) * _GOLDEN | 1) & _MASK)) & _MASK
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & _MASK
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & _MASK
        x ^= x >> 31
        h = (h + x) & _MASK
    h ^= h >> 33
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 29
    return h


def hash_keys(keys: np.ndarray) -> np.ndarray:
    """64-bit hashes of ``S`` keys, independent of the array's width (NUL padding adds nothing)."""
    n, w = len(keys), keys.dtype.itemsize
    if n == 0:
        return np.zeros(0, np.uint64)
    nw = (w + 7) // 8
    buf = np.zeros((n, nw * 8), np.uint8)
    buf[:, :w] = np.ascontiguousarray(keys).view(np.uint8).reshape(n, w)
    words = buf.view("<u8")
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(nw):
            # splitmix64 of the word times a per-position odd constant: a zero word adds 0, so
            # the hash of b"ab" is the same in an S2 and an S16 array.
            x = words[:, j] * np.uint64(((j + 1) * _GOLDEN | 1) & 0xFFFFFFFFFFFFFFFF)
            x ^= x >> np.uint64(30)
            x *= _M1
            x ^= x >> np.uint64(27)
            x *= _M2
            x ^= x >> np.uint64(31)
            h += x
        h ^= h >> np.uint64(33)
        h *= _M1
        h ^= h >> np.uint64(29)
    return h


class IdMap:
    """Rows ``0..len-1`` by record id (UTF-8 bytes); ``add`` extends it with the next rows."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, "S1")  # rows 0..len(keys)-1 (folded)
        self.hashes = np.zeros(0, np.uint64)
        self.rows = np.zeros(0, np.int64)
        self._tail: dict[bytes, int] = {}  # rows len(keys).. (recent small appends)
        self._tail_keys: list[bytes] = []

    def __len__(self) -> int:
        return len(self.keys) + len(self._tail_keys)

    def add(self, ids: Sequence[bytes] | np.ndarray) -> None:
        """Map the next ``len(ids)`` rows (``len(self)`` onwards) to ``ids``."""
        if len(ids) == 0:
            return
        if len(ids) >= FOLD_MIN:  # bulk (the first build, a big append): straight into the arrays
            self._fold()
            self._merge(as_keys(ids))
            return
        start = len(self)
        for j, k in enumerate(ids):
            k = k if isinstance(k, bytes) else str(k).encode("utf-8")
            self._tail[k] = start + j
            self._tail_keys.append(k)
        if len(self._tail_keys) >= max(FOLD_MIN, len(self.keys) // 16):
            self._fold()

    def add_chunks(self, chunks: Sequence[np.ndarray | Sequence[bytes]]) -> None:
        """``add`` for a read split into chunks: one merge for all of them."""
        arrays = [as_keys(c) for c in chunks if len(c)]
        if not arrays:
            return
        if sum(len(a) for a in arrays) < FOLD_MIN:
            for a in arrays:
                self.add(a.tolist())
            return
        self._fold()
        self._merge(np.concatenate(arrays), [hash_keys(a) for a in arrays])

    def _fold(self) -> None:
        if self._tail_keys:
            keys = np.array(self._tail_keys, dtype="S")
            self._tail, self._tail_keys = {}, []
            self._merge(keys)

    def _merge(self, new: np.ndarray, new_hashes: list[np.ndarray] | None = None) -> None:
        """Append keys for rows ``len(self.keys)..``; merge their hashes into the sorted arrays."""
        start = len(self.keys)
        h = np.concatenate(new_hashes) if new_hashes is not None else hash_keys(new)
        order = np.argsort(h)  # equal hashes (a collision) may come in any order: lookups walk the run
        h, r = h[order], order + start
        if start == 0:
            self.hashes, self.rows, self.keys = h, r, new
            return
        # a merge of two sorted runs: O(total) copies, no re-sort of what was there
        at = np.searchsorted(self.hashes, h, side="right")
        self.hashes, self.rows = np.insert(self.hashes, at, h), np.insert(self.rows, at, r)
        width = max(self.keys.dtype.itemsize, new.dtype.itemsize)
        self.keys = np.concatenate([self.keys.astype(f"S{width}", copy=False), new.astype(f"S{width}", copy=False)])

    def lookup(self, ids: Sequence[bytes]) -> np.ndarray:
        """Row of each id (int64), -1 where it is not mapped."""
        if len(ids) == 1:
            return np.array([self.lookup_one(ids[0])], dtype=np.int64)
        out = np.full(len(ids), -1, dtype=np.int64)
        if not len(ids):
            return out
        if self._tail:
            for j, k in enumerate(ids):
                out[j] = self._tail.get(k, -1)
        if not len(self.keys):
            return out
        todo = np.flatnonzero(out < 0)
        if not todo.size:
            return out
        q = as_keys([ids[j] for j in todo.tolist()])
        qh = hash_keys(q)
        pos = np.searchsorted(self.hashes, qh, side="left")
        inside = pos < len(self.hashes)
        cand = np.where(inside, pos, 0)
        hit = inside & (self.hashes[cand] == qh)
        rows = self.rows[cand]
        hit &= self.keys[rows] == q  # numpy compares S arrays of different widths correctly
        out[todo[hit]] = rows[hit]
        # The same hash for different ids (about one pair in 10^6 at 5M rows): walk the run.
        for j in np.flatnonzero(~hit & inside & (self.hashes[cand] == qh)).tolist():
            p = int(pos[j]) + 1
            while p < len(self.hashes) and self.hashes[p] == qh[j]:
                if self.keys[self.rows[p]] == q[j]:
                    out[todo[j]] = self.rows[p]
                    break
                p += 1
        return out

    def lookup_one(self, key: bytes) -> int:
        """Row of one id, -1 if not mapped (plain Python: ~µs, no array allocation)."""
        row = self._tail.get(key, -1)
        if row >= 0 or not len(self.keys):
            return row
        h = hash_key(key)
        hashes, n = self.hashes, len(self.hashes)
        p = int(hashes.searchsorted(np.uint64(h)))
        while p < n and int(hashes[p]) == h:
            r = int(self.rows[p])
            if self.keys[r] == key:
                return r
            p += 1
        return -1

    def keys_in_row_order(self) -> np.ndarray:
        """Every mapped id as ``S`` bytes, row order (for id filters: comparisons, contains)."""
        self._fold()
        return self.keys

"""HDF5 embedding store: ECG/report vectors, record ids, texts, labels, metadata and provenance.

``EmbeddingStore`` is the schema and the column reads (this module) on top of the segment
machinery (``indexing.segments``: part files, tier merges, compaction, the writer lock, re-scans)
and the file format (``indexing.columns``: header, column encodings, damage -> one line); an
append's inputs are checked and encoded by ``indexing.batch``.
Row ``i`` is the i-th record ever appended; FAISS ids are these rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid as uuid_mod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from indexing._io import atomic_h5, check_file_path, crash_point
from indexing.batch import batch_columns, check_unique_ids, norm_misses
from indexing.columns import (DAMAGE, DEFAULT_META_SCHEMA, FORMAT_NAME, FORMAT_VERSION, META_TYPES, REBUILD_HINT,
                              RESERVED, _canon, _damaged, _decode_str, _read_header, _short,
                              _write_main, _write_part)
from indexing.errors import ProvenanceMismatchError, RecordNotFoundError, StoreError
from indexing.idmap import IdMap, as_keys
from indexing.segments import SegmentFiles, _Segment

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_META_SCHEMA", "FORMAT_NAME", "FORMAT_VERSION", "META_TYPES", "EmbeddingStore"]


#: Ids read per HDF5 call when all of them are wanted (``ids``, the id -> row map).
_ID_CHUNK = 1 << 16


class EmbeddingStore(SegmentFiles):
    """Append-only, crash-safe store of ECG (and report) embeddings with their records' metadata.

    Row ``i`` is the i-th record ever appended; FAISS ids are these rows. Use ``create`` / ``open``.
    Readers see the rows that were complete when they opened (``refresh()`` to see newer ones).
    """

    def __init__(self, path: Path, _header: dict[str, Any]):
        self.path = Path(path)
        self._lock_fd: int | None = None
        # Read handles stay open between calls: opening an HDF5 file costs ~0.3 ms, and a query
        # fetches several columns of a few rows. Files are immutable once visible, so a cached
        # handle never sees a torn write; refresh()/compact() drop handles of replaced files.
        self._files: dict[Path, h5py.File] = {}
        self._header = _header
        self.dim: int = int(_header["dim"])
        self.has_text: bool = bool(_header["has_text"])
        #: Vectors are unit-norm (stores written by ``index``): reads check it and name damaged rows.
        self.unit_norm: bool = bool(_header.get("unit_norm", False))
        self.uuid: str = _header["store_uuid"]
        self.meta_schema: dict[str, str] = dict(_header["meta_schema"])
        self.provenance: dict[str, Any] = dict(_header["provenance"])
        self.refresh()

    # ---------------------------------------------------------------- create / open

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int, provenance: Mapping[str, Any] | None = None,
               meta_schema: Mapping[str, str] | None = None, *, has_text: bool = True,
               unit_norm: bool = False, overwrite: bool = False) -> EmbeddingStore:
        """Create an empty store.

        Args:
            path: the main HDF5 file; ``PATH.parts/`` and ``PATH.lock`` sit beside it.
            dim: embedding dimension of the ECG (and report) vectors.
            provenance: JSON-serialisable facts about how vectors were made (checkpoint_sha256,
                model_config, preprocessing, sampling_rate, package_version, ...).
            meta_schema: extra metadata columns, name -> "float" | "int" | "str" | "json"; the
                standard columns (age, sex, strat_fold, source) are always present.
            has_text: whether rows carry report vectors as well as ECG vectors.
            unit_norm: vectors are L2-normalised; appends refuse others and reads check norms, so
                flipped bytes in vector data are named instead of searched.
            overwrite: replace an existing store at ``path`` (its parts are deleted).
        """
        path = Path(path)
        check_file_path(path, "store", "store.h5", StoreError)
        schema = dict(DEFAULT_META_SCHEMA)
        for col, kind in (meta_schema or {}).items():
            if kind not in META_TYPES:
                raise StoreError(f"metadata column {col!r} has type {kind!r}; use one of {', '.join(META_TYPES)}")
            if col in RESERVED:
                raise StoreError(f"metadata column name {col!r} is reserved; rename it")
            schema[col] = kind
        if path.exists() and not overwrite:
            raise StoreError(f"store {path} already exists; open it to append, or pass overwrite/--rebuild")
        path.parent.mkdir(parents=True, exist_ok=True)
        prov = dict(provenance or {})
        try:
            json.dumps(prov)
        except TypeError as e:
            raise StoreError(f"provenance must be JSON-serialisable ({e}); pass plain dicts/strings/numbers") from e
        prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        header = {"dim": int(dim), "has_text": bool(has_text), "unit_norm": bool(unit_norm),
                  "store_uuid": uuid_mod.uuid4().hex,
                  "meta_schema": schema, "provenance": prov, "merged_upto": -1}
        store = cls.__new__(cls)
        store.path, store._lock_fd, store._files = path, None, {}
        store._acquire_lock()
        try:
            # Old parts go first: a crash after this leaves the old main alone, which is still a
            # consistent (if unwanted) store; the reverse order could pair new main with old parts.
            if store.parts_dir.exists():
                for p in store.parts_dir.iterdir():
                    p.unlink()
            # the columns of an empty batch: the main file holds the datasets every part holds
            empty = batch_columns([], np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32) if has_text else None,
                                  None, None, None, dim=int(dim), has_text=bool(has_text), unit_norm=False,
                                  meta_schema=schema)
            atomic_h5(path, lambda f: _write_main(f, header, empty, dim))
        finally:
            store._release_lock()
        logger.info("created store %s (dim %d, uuid %s)", path, dim, header["store_uuid"])
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> EmbeddingStore:
        """Open an existing store; a missing or unreadable file raises StoreError with the fix."""
        path = Path(path)
        check_file_path(path, "store", "store.h5", StoreError)
        if not path.exists():
            raise StoreError(f"no embedding store at {path}; build one with `etp-search index DATA_DIR --store {path}`")
        header = _read_header(path)
        return cls(path, header)

    def close(self) -> None:
        """Close read handles and release the writer lock, if held."""
        self._close_files()
        self._release_lock()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, rows={self._n}, dim={self.dim}, parts={len(self._segments) - 1})"

    # ---------------------------------------------------------------- row bookkeeping

    @property
    def ids(self) -> list[str]:
        """Record ids in row order (a new list, read from the files: O(rows); prefer ``ids_at``)."""
        out: list[str] = []
        for a in range(0, self._n, _ID_CHUNK):
            out.extend(self._read("ids", slice(a, min(self._n, a + _ID_CHUNK)), None, object))
        return out

    def ids_at(self, rows: Iterable[int]) -> list[str]:
        """Record ids of some rows, read for those rows only (cheap per query)."""
        idx = np.fromiter((int(r) for r in rows), dtype=np.int64)
        return self._read("ids", idx, None, object) if idx.size else []

    def _id_rows(self) -> IdMap:
        """The id -> row map (``indexing.idmap``: numpy arrays, UTF-8 keys), built on the first
        lookup from one chunked read of the ids (``_ID_CHUNK`` rows a call) and extended with the
        rows appended since; opening a store reads no ids."""
        if self._row is None:
            self._row = IdMap()
        self._row.add_chunks([self._read_raw_ids(a, min(self._n, a + _ID_CHUNK))
                              for a in range(len(self._row), self._n, _ID_CHUNK)])
        return self._row

    def _read_raw_ids(self, a: int, b: int) -> np.ndarray:
        """Ids of rows a..b as UTF-8 ``S`` bytes (no Python str per row)."""
        return as_keys(self._read("ids", slice(a, b), None, object, decode=False))

    def find_rows(self, ids: Iterable[str]) -> np.ndarray:
        """Row of each record id (int64), -1 for ids not stored; one vectorised lookup."""
        keys = [str(rid).encode("utf-8") for rid in ids]
        return self._id_rows().lookup(keys) if keys else np.zeros(0, np.int64)

    def id_keys(self) -> np.ndarray:
        """Every record id as UTF-8 bytes (numpy ``S``), row order, shared with the id map: the
        O(rows) column an id filter compares against without a Python string per row."""
        return self._id_rows().keys_in_row_order()

    @property
    def meta_columns(self) -> list[str]:
        return list(self.meta_schema)

    def contains(self, ids: Iterable[str]) -> np.ndarray:
        """Boolean mask: which of ``ids`` are already stored (for resuming an interrupted run)."""
        return self.find_rows(ids) >= 0

    def row_of(self, record_id: str) -> int:
        """Row of one record id; RecordNotFoundError if it is not stored."""
        row = int(self.find_rows([record_id])[0])
        if row < 0:
            examples = ", ".join(repr(i) for i in self.ids_at(range(min(3, self._n))))
            raise RecordNotFoundError(
                f"record {record_id!r} is not in store {self.path} ({self._n} records); "
                + (f"ids are the dataset's record ids, e.g. {examples}" if self._n
                   else "the store is empty; index a dataset into it first"))
        return row

    def check_not_empty(self) -> None:
        """StoreError when the store holds no rows yet (call before a query, not to get odd k errors)."""
        if self._n == 0:
            raise StoreError(f"store {self.path} is empty; index a dataset into it first "
                             f"(`etp-search index DATA_DIR --store {self.path}`)")

    def rows_of(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of several record ids (int64); RecordNotFoundError names the first missing one."""
        ids = [str(r) for r in ids]
        rows = self.find_rows(ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            self.row_of(ids[int(missing[0])])  # raises RecordNotFoundError naming it
        return rows

    # ---------------------------------------------------------------- reads

    def _rows_index(self, rows: slice | Sequence[int] | np.ndarray | None) -> np.ndarray | slice:
        if rows is None:
            return slice(0, self._n)
        if isinstance(rows, slice):
            return slice(*rows.indices(self._n)[:2]) if rows.step in (None, 1) else np.arange(self._n)[rows]
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (self._n,):
                raise StoreError(f"row mask has {idx.shape[0]} entries but the store has {self._n} rows")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).ravel()
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise StoreError(f"row index out of range for a store of {self._n} rows")
        return np.where(idx < 0, idx + self._n, idx)

    def _read(self, name: str, rows: Any, width: int | None, dtype: Any, decode: bool = True) -> Any:
        """Read dataset ``name`` for ``rows`` across main + parts into one preallocated array.

        A part may be merged away by a concurrent writer between the scan and the read; rows keep
        their numbers across a refresh, so the reader re-scans and reads the same rows again.
        """
        sel = self._rows_index(rows)

        def read_once() -> Any:
            try:
                out = self._read_sel(name, sel, width, dtype)
                return _decode_str(out) if dtype == object and decode else out
            except StoreError:  # Vanished among them: retried
                raise
            except DAMAGE as e:
                part = getattr(e, "segment_file", None)  # a part file, not the main one: name it
                where = f" in {os.path.relpath(part, self.path.parent)}" if part is not None and Path(part) != self.path else ""
                raise _damaged(self.path, f"reading {name}{where}", e) from e

        return self._retry_vanished(read_once, rescan=True)

    def ecg(self, rows: Any = None) -> np.ndarray:
        """ECG vectors (n, dim) float32 for ``rows`` (None = all, slice, int array or bool mask)."""
        return self.vectors("ecg", rows)

    def text(self, rows: Any = None) -> np.ndarray:
        """Report vectors (n, dim) float32; StoreError if the store holds none."""
        return self.vectors("text", rows)

    def vectors(self, which: str, rows: Any = None) -> np.ndarray:
        """ECG ("ecg") or report ("text") vectors for ``rows``; on a unit-norm store, rows whose norm
        is not 1 (damaged bytes) raise StoreError naming them."""
        if which not in ("ecg", "text"):
            raise StoreError(f"unknown vector kind {which!r}; use 'ecg' or 'text'")
        if which == "text" and not self.has_text:
            raise StoreError(f"store {self.path} holds no report vectors; rebuild it with text embedding enabled")
        x = self._read(which, rows, self.dim, np.float32)
        if self.unit_norm and len(x):
            self._check_norms(which, x, rows)
        return x

    def _check_norms(self, which: str, x: np.ndarray, rows: Any) -> None:
        norms, bad = norm_misses(x)
        if not bad.size:
            return
        sel = self._rows_index(rows)
        at = (np.arange(sel.start, sel.stop) if isinstance(sel, slice) else np.asarray(sel))[bad]
        shown = ", ".join(f"{int(r)} ({rid!r}, norm {norms[b]:.4g})"
                          for r, rid, b in zip(at[:3], self.ids_at(at[:3]), bad[:3]))
        raise StoreError(f"store {self.path} has damaged {which} vectors in {len(bad)} row(s): {shown}"
                         f"{', ...' if len(bad) > 3 else ''} (stored vectors have norm 1); {REBUILD_HINT}")

    def texts(self, rows: Any = None) -> list[str]:
        """Report texts for ``rows``."""
        return self._read("texts", rows, None, object)

    def labels_json(self, rows: Any = None) -> list[str]:
        """Labels as stored: one JSON object string (code -> weight) per row."""
        return self._read("labels", rows, None, object)

    def texts_bytes(self, rows: Any = None) -> np.ndarray:
        """Report texts as stored, UTF-8 in a numpy ``S`` array (no Python str per row)."""
        return as_keys(self._read("texts", rows, None, object, decode=False))

    def labels_bytes(self, rows: Any = None) -> np.ndarray:
        """Labels as stored, UTF-8 JSON in a numpy ``S`` array (no Python str per row)."""
        return as_keys(self._read("labels", rows, None, object, decode=False))

    def labels(self, rows: Any = None) -> list[dict[str, float]]:
        """Labels decoded: one dict (dataset-native code -> weight) per row."""
        try:
            return [json.loads(s) if s else {} for s in self.labels_json(rows)]
        except ValueError as e:
            raise _damaged(self.path, "labels", e) from e

    def meta(self, col: str, rows: Any = None) -> np.ndarray | list[Any]:
        """One metadata column: float64 / int64 / str arrays, or a list for "json" columns."""
        kind = self.meta_schema.get(col)
        if kind is None:
            raise StoreError(f"unknown metadata column {col!r}; the store has: {', '.join(self.meta_schema)}")
        if kind in ("float", "int"):
            return self._read(f"meta/{col}", rows, None, np.float64 if kind == "float" else np.int64)
        values = self._read(f"meta/{col}", rows, None, object)
        if kind == "json":
            try:
                return [json.loads(v) for v in values]
            except ValueError as e:
                raise _damaged(self.path, f"metadata column {col}", e) from e
        return np.array(values, dtype=str) if values else np.array([], dtype=str)

    # ---------------------------------------------------------------- provenance

    def check_provenance(self, expected: Mapping[str, Any]) -> None:
        """Raise ProvenanceMismatchError naming every field of ``expected`` that differs.

        Fields whose expected value is None are not checked (unknown at call time).
        """
        diffs, names = [], []
        for key, want in expected.items():
            if want is None:
                continue
            have = self.provenance.get(key)
            if _canon(have) == _canon(want):
                continue
            names.append(key)
            diffs.append(f"{key} (store: {_short(have)}, now: {_short(want)})")
        if names:
            raise ProvenanceMismatchError(
                f"store {self.path} was built with a different {', '.join(diffs)}; "
                f"use the checkpoint/preset it was built with, or re-embed into a new store with "
                f"`etp-search index DATA_DIR --store NEW.h5` (--rebuild would replace this one)",
                names)

    # ---------------------------------------------------------------- writes

    def append(self, ids: Sequence[str], ecg: np.ndarray, text: np.ndarray | None = None,
               texts: Sequence[str] | None = None, labels: Sequence[Mapping[str, float] | str] | None = None,
               meta: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | None = None) -> None:
        """Append one whole batch atomically: after a crash it is either fully present or absent.

        Args:
            ids: record ids, unique and not yet stored (filter with ``~store.contains(ids)``).
            ecg: (n, dim) ECG vectors.
            text: (n, dim) report vectors (required when the store has text).
            texts: report strings ("" when None).
            labels: per-row dicts (code -> weight) or JSON strings ("{}" when None).
            meta: column -> values, or one dict per record (keys outside the schema are ignored);
                columns left out are filled with the missing value (nan / -1 / "").
        """
        ids = [str(i) for i in ids]
        n = len(ids)
        if n == 0:
            return
        self.begin_write()  # lock + refresh first: the "already stored" check must see other writers' rows
        cols = self._batch_columns(ids, ecg, text, texts, labels, meta)
        seq = self._next_seq
        final = self.parts_dir / f"p{seq:010d}-{seq:010d}-L0.h5"
        self.parts_dir.mkdir(exist_ok=True)
        crash_point("before-part")
        atomic_h5(final, lambda f: _write_part(f, self.uuid, seq, seq, 0, cols, self.dim), self.parts_dir)
        crash_point("after-part")
        self._segments.append(_Segment(final, self._n, n, seq, seq, 0))
        if self._row is not None and len(self._row) == self._n:
            self._row.add([r.encode("utf-8") for r in ids])
        self._n += n
        self._next_seq = seq + 1
        self._merge_tiers()

    def _batch_columns(self, ids: list[str], ecg: Any, text: Any, texts: Any, labels: Any,
                       meta: Any) -> dict[str, np.ndarray]:
        """Check and encode one batch (``indexing.batch``), after the one check only the store can
        make: no id of it is stored already."""
        check_unique_ids(ids)
        present = [ids[j] for j in np.flatnonzero(self.find_rows(ids) >= 0).tolist()]
        if present:
            raise StoreError(f"{len(present)} record(s) already stored (e.g. {present[0]!r}); "
                             "skip them with store.contains(ids) to resume")
        return batch_columns(ids, ecg, text, texts, labels, meta, dim=self.dim, has_text=self.has_text,
                             unit_norm=self.unit_norm, meta_schema=self.meta_schema)

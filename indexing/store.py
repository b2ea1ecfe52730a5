"""HDF5 embedding store: ECG/report vectors, record ids, texts, labels, metadata and provenance.

Layout on disk (``STORE`` is the path the user names, e.g. ``etp-data/store.h5``)::

    STORE                 main file: header (provenance, schema, uuid) + rows merged by compact()
    STORE.parts/          one small HDF5 file per appended batch (or per merge of batches)
        p0000000000-0000000000-L0.h5     batch sequence numbers lo-hi, merge level
    STORE.lock            advisory lock held by the (single) writer

Why not append in place: resizing an HDF5 dataset rewrites B-tree/heap metadata in several places;
a SIGKILL between those writes leaves a file h5py cannot open. Instead every file here is written
once to a temporary name, fsync'ed and ``os.replace``'d, so any file a reader can see is complete.
A batch is one part file, so a crash loses at most the batch being written, never half of it.
Parts are merged in tiers (``_FANOUT`` parts of level L -> one part of level L+1), which bounds the
number of parts to ~_FANOUT per level and rewrites each row O(log N) times; ``compact()`` folds
everything into a new main file. A merge result covers the sequence range of its inputs, so when a
crash leaves both the merged file and its inputs behind, readers take the covering file and the
next writer deletes the leftovers; the main file records ``merged_upto`` for the same reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import time
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from indexing._io import atomic_write, check_file_path
from indexing.errors import ProvenanceMismatchError, RecordNotFoundError, StoreError

logger = logging.getLogger(__name__)

FORMAT_NAME = "etp-embedding-store"
FORMAT_VERSION = 1
#: Metadata columns every store has (EcgRecord.meta conventions: nan / -1 / "" mean unknown).
DEFAULT_META_SCHEMA: dict[str, str] = {"age": "float", "sex": "int", "strat_fold": "int", "source": "str"}
META_TYPES = ("float", "int", "str", "json")
_MISSING = {"float": float("nan"), "int": -1, "str": "", "json": None}
_FANOUT = 8
#: |norm - 1| above this on a unit-norm store means damaged bytes (float32 normalisation errs ~1e-7).
_NORM_TOL = 1e-3
_PART_RE = re.compile(r"^p(\d{10})-(\d{10})-L(\d+)\.h5$")
_STR = h5py.string_dtype("utf-8")
_REBUILD_HINT = "rebuild it with `etp-search index DATA_DIR --rebuild` (or point --store elsewhere)"
#: A reader that finds a file gone (merged or compacted by the writer meanwhile) re-scans this
#: many times, with short growing pauses, before it gives up.
_READ_RETRIES = 6
_LOCK_RETRIES = 10  # the writer lock is retried briefly: a reader may probe it for a moment

#: Test hook (faiss contrib/big_batch_search.py style ``crash_at``): called with a point name at
#: each step of a write; a test sets it to raise or ``os._exit`` to simulate a crash there.
crash_hook: Callable[[str], None] | None = None


def _hook(point: str) -> None:
    if crash_hook is not None:
        crash_hook(point)


# ----------------------------------------------------------------------------- file helpers


def _atomic_h5(final: Path, write: Callable[[h5py.File], None], tmp_dir: Path | None = None) -> None:
    """Write an HDF5 file under a temporary name, fsync it and rename it into place."""

    def write_file(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            write(f)

    atomic_write(final, write_file, tmp_dir, before_replace=lambda: _hook("before-replace"))


def _chunk_rows(dim: int) -> int:
    return max(1, (1 << 20) // max(1, dim * 4))  # ~1 MiB chunks: contiguous reads, cheap appends


def _encode_meta(kind: str, values: Sequence[Any], n: int) -> np.ndarray:
    if kind == "float":
        return np.array([_MISSING["float"] if v is None else float(v) for v in values], dtype="f8")
    if kind == "int":
        out = []
        for v in values:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(-1)
            else:
                out.append(int(v))
        return np.array(out, dtype="i8")
    if kind == "str":
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    return np.array([json.dumps(v) for v in values], dtype=object)  # json


def _decode_str(arr: np.ndarray) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in arr.tolist()]


#: What h5py / HDF5 raise on damaged files: failed chunk reads or checksums (OSError), broken
#: strings (UnicodeDecodeError is a ValueError), missing datasets (KeyError), odd shapes (TypeError).
_DAMAGE = (OSError, ValueError, KeyError, TypeError, RuntimeError)


def _damaged(path: Path, what: str, err: BaseException) -> StoreError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:80]
    return StoreError(f"store {path} is damaged ({what}: {reason}); {_REBUILD_HINT}")


def _write_rows(f: h5py.File, cols: Mapping[str, np.ndarray], dim: int) -> None:
    """Write a batch's columns as chunked, resizable datasets."""
    for name, arr in cols.items():
        n = len(arr)
        if arr.dtype == object:
            f.create_dataset(name, data=arr, dtype=_STR, maxshape=(None,), chunks=(max(1, min(4096, n)),))
        elif arr.ndim == 2:  # fletcher32: a flipped byte in a chunk fails the read instead of being used
            f.create_dataset(name, data=arr, maxshape=(None, arr.shape[1]), fletcher32=True,
                             chunks=(max(1, min(_chunk_rows(dim), n)), arr.shape[1]))
        else:
            f.create_dataset(name, data=arr, maxshape=(None,), chunks=(max(1, min(65536, n)),), fletcher32=True)
        _hook("mid-write")


class _Segment:
    """One file holding a contiguous run of rows (the main file or a part)."""

    __slots__ = ("path", "start", "n", "lo", "hi", "level")

    def __init__(self, path: Path, start: int, n: int, lo: int = -1, hi: int = -1, level: int = -1):
        self.path, self.start, self.n, self.lo, self.hi, self.level = path, start, n, lo, hi, level


class _Vanished(StoreError):
    """A file the reader listed was replaced or deleted by the writer before it was opened.

    Transient when another process is writing: the reader re-scans and tries again.
    """


def _scan_parts(parts_dir: Path, merged_upto: int) -> tuple[list[tuple[int, int, int, Path]], list[Path]]:
    """Visible parts (lo, hi, level, path) in order, and leftover files a writer may delete."""
    found, leftovers = [], []
    if not parts_dir.is_dir():
        return [], []
    for p in parts_dir.iterdir():
        m = _PART_RE.match(p.name)
        if m is None:
            if p.name.startswith(".tmp-"):
                leftovers.append(p)
            continue
        lo, hi, level = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if hi <= merged_upto:
            leftovers.append(p)  # already folded into the main file by compact()
        else:
            found.append((lo, hi, level, p))
    # A merge result covers its inputs' range; inputs left behind by a crash are shadowed by it.
    found.sort(key=lambda t: (t[0], -t[1]))
    visible: list[tuple[int, int, int, Path]] = []
    for t in found:
        if visible and t[1] <= visible[-1][1]:
            leftovers.append(t[3])
        else:
            visible.append(t)
    expect = merged_upto + 1
    for lo, hi, _, p in visible:
        if lo != expect:
            raise _Vanished(f"store parts folder {parts_dir} is damaged (batch {expect} missing before {p.name}); "
                             f"{_REBUILD_HINT}")
        expect = hi + 1
    return visible, leftovers


# ----------------------------------------------------------------------------- the store


class EmbeddingStore:
    """Append-only, crash-safe store of ECG (and report) embeddings with their records' metadata.

    Row ``i`` is the i-th record ever appended; FAISS ids are these rows. Use ``create`` / ``open``.
    Readers see the rows that were complete when they opened (``refresh()`` to see newer ones).
    """

    def __init__(self, path: Path, _header: dict[str, Any]):
        self.path = Path(path)
        self.parts_dir = Path(str(self.path) + ".parts")
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
        self._load_rows()

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
            if col in ("id", "label", "labels", "text", "texts", "ecg", "ids"):
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
        store.path, store.parts_dir, store._lock_fd, store._files = path, Path(str(path) + ".parts"), None, {}
        store._acquire_lock()
        try:
            # Old parts go first: a crash after this leaves the old main alone, which is still a
            # consistent (if unwanted) store; the reverse order could pair new main with old parts.
            if store.parts_dir.exists():
                for p in store.parts_dir.iterdir():
                    p.unlink()
            _atomic_h5(path, lambda f: _write_main(f, header, _empty_cols(header), dim))
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

    def refresh(self) -> None:
        """Re-read the file list to see rows appended by another process since open.

        Rows keep their numbers: a refresh only adds rows at the end.
        """
        self._load_rows()

    def close(self) -> None:
        """Close read handles and release the writer lock, if held."""
        self._close_files()
        self._release_lock()

    def _file(self, path: Path) -> h5py.File:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = _open_h5(path)
        return f

    def _close_files(self, paths: Iterable[Path] | None = None) -> None:
        for p in list(self._files) if paths is None else list(paths):
            f = self._files.pop(p, None)
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()

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

    def _load_rows(self) -> None:
        """Read the file list; re-scan when the writer merges or compacts files under us."""
        for attempt in range(_READ_RETRIES):
            try:
                self._load_rows_once()
                return
            except _Vanished as e:
                if attempt == _READ_RETRIES - 1:
                    raise self._transient_failure(e) from e
                logger.debug("store files changed while reading (%s); re-scanning", e)
                time.sleep(0.01 * 2 ** attempt)

    def _load_rows_once(self) -> None:
        self._close_files()  # the main file may have been replaced by a compaction
        # Header, ids and later reads of the main file all go through this one handle, so a
        # compaction that replaces the file meanwhile cannot pair a new header with old parts.
        main = _open_h5(self.path)
        try:
            header = _header_of(main, self.path)
            if header["store_uuid"] != self.uuid:
                raise StoreError(f"store {self.path} was recreated by another process while open; "
                                 "run the command again")
            ids: list[str] = _decode_str(main["ids"][:])
        except StoreError:
            main.close()
            raise
        except _DAMAGE as e:
            main.close()
            raise _damaged(self.path, "record ids", e) from e
        except BaseException:
            main.close()
            raise
        self._files[self.path] = main
        self._header = header
        merged_upto = int(header["merged_upto"])
        visible, _ = _scan_parts(self.parts_dir, merged_upto)
        segments = [_Segment(self.path, 0, int(header["n_rows"]))]
        start = len(ids)
        for lo, hi, level, p in visible:
            with _open_h5(p) as f:
                try:
                    if f.attrs.get("store_uuid") != self.uuid:
                        raise StoreError(f"part {p} belongs to another store; {_REBUILD_HINT}")
                    part_ids = _decode_str(f["ids"][:])
                except _DAMAGE as e:
                    raise _damaged(p, "record ids", e) from e
            segments.append(_Segment(p, start, len(part_ids), lo, hi, level))
            ids.extend(part_ids)
            start += len(part_ids)
        self._segments = segments
        self._ids = ids
        self._row = {rid: i for i, rid in enumerate(ids)}
        self._n = len(ids)
        self._next_seq = max([merged_upto] + [s.hi for s in segments[1:]]) + 1

    def _transient_failure(self, err: StoreError) -> StoreError:
        """The error to show once re-scanning gave up: never advise a rebuild during a live write."""
        if self.writer_active():
            return StoreError(f"store {self.path} kept changing while being read (another process is writing it); "
                              "run the command again when that process has finished")
        return err

    def writer_active(self) -> bool:
        """True when another process holds this store's write lock (an ``index`` run is appending)."""
        if self._lock_fd is not None:
            return False
        try:
            fd = os.open(str(self.path) + ".lock", os.O_RDONLY)
        except OSError:
            return False  # no lock file: nobody has written since it was made
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock if it was taken
        return False

    @property
    def holds_write_lock(self) -> bool:
        """True when this object is the store's writer (it appended, or holds ``write_lock``)."""
        return self._lock_fd is not None

    @contextlib.contextmanager
    def write_lock(self, wait: bool = False) -> Iterator[bool]:
        """Hold the writer lock for a block; yields False (holding nothing) when another process
        has it and ``wait`` is False. Used to save index files without racing an ``index`` run."""
        if self._lock_fd is not None:
            yield True
            return
        try:
            self._acquire_lock()
        except StoreError:
            if wait:
                raise
            yield False
            return
        try:
            yield True
        finally:
            self._release_lock()

    @property
    def ids(self) -> list[str]:
        """Record ids in row order (a copy)."""
        return list(self._ids)

    def ids_at(self, rows: Iterable[int]) -> list[str]:
        """Record ids of some rows (no copy of the whole id list: cheap per query)."""
        return [self._ids[int(r)] for r in rows]

    @property
    def meta_columns(self) -> list[str]:
        return list(self.meta_schema)

    def contains(self, ids: Iterable[str]) -> np.ndarray:
        """Boolean mask: which of ``ids`` are already stored (for resuming an interrupted run)."""
        return np.array([rid in self._row for rid in ids], dtype=bool)

    def row_of(self, record_id: str) -> int:
        """Row of one record id; RecordNotFoundError if it is not stored."""
        try:
            return self._row[record_id]
        except KeyError:
            examples = ", ".join(repr(i) for i in self._ids[:3])
            raise RecordNotFoundError(
                f"record {record_id!r} is not in store {self.path} ({self._n} records); "
                + (f"ids are the dataset's record ids, e.g. {examples}" if self._n
                   else "the store is empty; index a dataset into it first")) from None

    def check_not_empty(self) -> None:
        """StoreError when the store holds no rows yet (call before a query, not to get odd k errors)."""
        if self._n == 0:
            raise StoreError(f"store {self.path} is empty; index a dataset into it first "
                             f"(`etp-search index DATA_DIR --store {self.path}`)")

    def rows_of(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of several record ids (int64); RecordNotFoundError names the first missing one."""
        return np.array([self.row_of(r) for r in ids], dtype=np.int64)

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

    def _read(self, name: str, rows: Any, width: int | None, dtype: Any) -> Any:
        """Read dataset ``name`` for ``rows`` across main + parts into one preallocated array.

        A part may be merged away by a concurrent writer between the scan and the read; rows keep
        their numbers across a refresh, so the reader re-scans and reads the same rows again.
        """
        sel = self._rows_index(rows)
        for attempt in range(_READ_RETRIES):
            try:
                out = self._read_sel(name, sel, width, dtype)
                return _decode_str(out) if dtype == object else out
            except _Vanished as e:
                if attempt == _READ_RETRIES - 1:
                    raise self._transient_failure(e) from e
                logger.debug("store file gone while reading (%s); re-scanning", e)
                time.sleep(0.01 * 2 ** attempt)
                self.refresh()
            except StoreError:
                raise
            except _DAMAGE as e:
                raise _damaged(self.path, f"reading {name}", e) from e
        raise AssertionError("unreachable")

    def _read_sel(self, name: str, sel: np.ndarray | slice, width: int | None, dtype: Any) -> np.ndarray:
        if isinstance(sel, slice):
            lo, hi = sel.start, max(sel.start, sel.stop)
            out = np.empty((hi - lo,) + ((width,) if width else ()), dtype=dtype)
            for seg in self._segments:
                a, b = max(lo, seg.start), min(hi, seg.start + seg.n)
                if a >= b:
                    continue
                ds = self._file(seg.path)[name]
                if dtype == object:
                    out[a - lo:b - lo] = ds[a - seg.start:b - seg.start]
                else:  # read_direct: straight into the result, no temporary copy
                    ds.read_direct(out, np.s_[a - seg.start:b - seg.start], np.s_[a - lo:b - lo])
            return out
        out = np.empty((len(sel),) + ((width,) if width else ()), dtype=dtype)
        if len(sel) == 0:
            return out
        order = np.argsort(sel, kind="stable")
        sorted_rows = sel[order]
        for seg in self._segments:
            a = np.searchsorted(sorted_rows, seg.start)
            b = np.searchsorted(sorted_rows, seg.start + seg.n)
            if a >= b:
                continue
            local = sorted_rows[a:b] - seg.start
            uniq, inv = np.unique(local, return_inverse=True)  # h5py wants increasing, unique indices
            ds = self._file(seg.path)[name]
            if len(uniq) > 0.25 * seg.n:  # dense selection: one contiguous read beats fancy indexing
                block = ds[int(uniq[0]):int(uniq[-1]) + 1][uniq - uniq[0]]
            else:
                block = ds[uniq]
            out[order[a:b]] = block[inv]
        return out

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
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        bad = np.flatnonzero(~(np.abs(norms - 1.0) < _NORM_TOL))  # also catches nan
        if not bad.size:
            return
        sel = self._rows_index(rows)
        at = (np.arange(sel.start, sel.stop) if isinstance(sel, slice) else np.asarray(sel))[bad]
        shown = ", ".join(f"{int(r)} ({self._ids[int(r)]!r}, norm {norms[b]:.4g})" for r, b in zip(at[:3], bad[:3]))
        raise StoreError(f"store {self.path} has damaged {which} vectors in {len(bad)} row(s): {shown}"
                         f"{', ...' if len(bad) > 3 else ''} (stored vectors have norm 1); {_REBUILD_HINT}")

    def texts(self, rows: Any = None) -> list[str]:
        """Report texts for ``rows``."""
        return self._read("texts", rows, None, object)

    def labels_json(self, rows: Any = None) -> list[str]:
        """Labels as stored: one JSON object string (code -> weight) per row."""
        return self._read("labels", rows, None, object)

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
        if kind == "float":
            return self._read(f"meta/{col}", rows, None, np.float64)
        if kind == "int":
            return self._read(f"meta/{col}", rows, None, np.int64)
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

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(_LOCK_RETRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _LOCK_RETRIES - 1:
                    os.close(fd)
                    raise StoreError(f"another process is writing store {self.path}; "
                                     "wait for it to finish, then run the command again") from None
                time.sleep(0.02)  # a reader's writer_active() probe holds a shared lock for microseconds
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def begin_write(self) -> None:
        """Become the store's writer now (held until ``close``): take the lock, pick up others'
        appends, delete crash leftovers. StoreError when another process is writing."""
        self._begin_write()

    def _begin_write(self) -> None:
        """Take the writer lock, pick up others' appends, and delete crash leftovers."""
        if self._lock_fd is None:
            self._acquire_lock()
            self.refresh()
            _, leftovers = _scan_parts(self.parts_dir, int(self._header["merged_upto"]))
            for p in leftovers:
                logger.info("removing leftover %s from an interrupted write", p.name)
                with contextlib.suppress(OSError):
                    p.unlink()
            for p in self.path.parent.glob(f".tmp-*-{self.path.name}"):
                with contextlib.suppress(OSError):
                    p.unlink()

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
        self._begin_write()  # lock + refresh first: the "already stored" check must see other writers' rows
        cols = self._batch_columns(ids, ecg, text, texts, labels, meta)
        seq = self._next_seq
        final = self.parts_dir / f"p{seq:010d}-{seq:010d}-L0.h5"
        self.parts_dir.mkdir(exist_ok=True)
        _hook("before-part")
        _atomic_h5(final, lambda f: _write_part(f, self.uuid, seq, seq, 0, cols, self.dim), self.parts_dir)
        _hook("after-part")
        self._segments.append(_Segment(final, self._n, n, seq, seq, 0))
        for i, rid in enumerate(ids):
            self._row[rid] = self._n + i
        self._ids.extend(ids)
        self._n += n
        self._next_seq = seq + 1
        self._merge_tiers()

    def _batch_columns(self, ids: list[str], ecg: Any, text: Any, texts: Any, labels: Any,
                       meta: Any) -> dict[str, np.ndarray]:
        n = len(ids)
        if len(set(ids)) != n:
            dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise StoreError(f"record ids repeat within the batch ({', '.join(dup)}); record ids must be unique")
        present = [i for i in ids if i in self._row]
        if present:
            raise StoreError(f"{len(present)} record(s) already stored (e.g. {present[0]!r}); "
                             "skip them with store.contains(ids) to resume")
        cols: dict[str, np.ndarray] = {"ids": np.array(ids, dtype=object)}
        cols["ecg"] = self._check_vectors("ecg", ecg, n)
        if self.has_text:
            if text is None:
                raise StoreError("this store holds report vectors: pass text= with the batch")
            cols["text"] = self._check_vectors("text", text, n)
        elif text is not None:
            raise StoreError("this store was created without report vectors (has_text=False); drop text=")
        cols["texts"] = np.array(["" if t is None else str(t) for t in (texts or [""] * n)], dtype=object)
        if labels is None:
            labels = ["{}"] * n
        cols["labels"] = np.array([lab if isinstance(lab, str)
                                   else json.dumps({str(k): float(v) for k, v in lab.items()}, sort_keys=True)
                                   for lab in labels], dtype=object)
        for name in ("texts", "labels"):
            if len(cols[name]) != n:
                raise StoreError(f"{name} has {len(cols[name])} entries for {n} ids")
        by_col: dict[str, Sequence[Any]] = {}
        if meta is None:
            pass
        elif isinstance(meta, Mapping):
            unknown = set(meta) - set(self.meta_schema)
            if unknown:
                raise StoreError(f"unknown metadata column(s) {', '.join(sorted(unknown))}; the store has: "
                                 f"{', '.join(self.meta_schema)} (add columns with meta_schema at create)")
            by_col = dict(meta)
        else:
            if len(meta) != n:
                raise StoreError(f"meta has {len(meta)} records for {n} ids")
            by_col = {c: [m.get(c) for m in meta] for c in self.meta_schema}
        for col, kind in self.meta_schema.items():
            values = by_col.get(col)
            if values is None:
                values = [None] * n
            if len(values) != n:
                raise StoreError(f"metadata column {col!r} has {len(values)} values for {n} ids")
            try:
                cols[f"meta/{col}"] = _encode_meta(kind, values, n)
            except (TypeError, ValueError) as e:
                raise StoreError(f"metadata column {col!r} ({kind}) got a bad value: {e}") from e
        return cols

    def _check_vectors(self, name: str, x: Any, n: int) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != (n, self.dim):
            raise StoreError(f"{name} vectors have shape {x.shape}; this store expects ({n}, {self.dim})")
        if not np.isfinite(x).all():
            raise StoreError(f"{name} vectors contain NaN/inf (bad input record?); drop those records")
        if self.unit_norm and n:
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            if not (np.abs(norms - 1.0) < _NORM_TOL).all():
                raise StoreError(f"{name} vectors must be L2-normalised for this store (norms "
                                 f"{norms.min():.4g}..{norms.max():.4g}); normalise them before appending")
        return x

    def _merge_tiers(self) -> None:
        """Merge the trailing _FANOUT parts of one level into a part of the next level."""
        while True:
            parts = self._segments[1:]
            if len(parts) < _FANOUT:
                return
            tail = parts[-_FANOUT:]
            level = tail[0].level
            if any(s.level != level for s in tail):
                return
            lo, hi = tail[0].lo, tail[-1].hi
            final = self.parts_dir / f"p{lo:010d}-{hi:010d}-L{level + 1}.h5"
            _hook("before-merge")
            _atomic_h5(final, lambda f: _copy_segments(f, tail, self, {"store_uuid": self.uuid, "lo": lo,
                                                                         "hi": hi, "level": level + 1}),
                       self.parts_dir)
            _hook("after-merge")
            self._close_files(s.path for s in tail)
            for s in tail:
                with contextlib.suppress(OSError):
                    s.path.unlink()
            merged = _Segment(final, tail[0].start, sum(s.n for s in tail), lo, hi, level + 1)
            self._segments = self._segments[:-_FANOUT] + [merged]
            logger.debug("merged parts %d-%d into level %d", lo, hi, level + 1)

    def compact(self) -> None:
        """Fold all parts into a new main file (written aside, then renamed) and delete them."""
        self._begin_write()
        if len(self._segments) == 1:
            return
        header = dict(self._header)
        header["merged_upto"] = self._segments[-1].hi
        header["n_rows"] = self._n
        t0 = time.perf_counter()
        _hook("before-compact")
        _atomic_h5(self.path, lambda f: (_write_header(f, header),
                                         _copy_segments(f, self._segments, self, None)))
        _hook("after-compact")
        for s in self._segments[1:]:
            with contextlib.suppress(OSError):
                s.path.unlink()
        logger.info("compacted %s: %d rows in %.1fs", self.path, self._n, time.perf_counter() - t0)
        self.refresh()


# ----------------------------------------------------------------------------- file formats


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if isinstance(e, FileNotFoundError) or not path.exists():
            raise _Vanished(f"cannot read {path}: the file is gone") from e
        check_file_path(path, "store", "store.h5", StoreError)
        raise StoreError(f"cannot read {path} ({str(e).splitlines()[0][:80]}): it is not a complete HDF5 file; "
                         f"if it is a damaged store, {_REBUILD_HINT}") from e


def _empty_cols(header: Mapping[str, Any]) -> dict[str, np.ndarray]:
    dim = int(header["dim"])
    cols: dict[str, np.ndarray] = {"ids": np.array([], dtype=object),
                                   "ecg": np.zeros((0, dim), np.float32)}
    if header["has_text"]:
        cols["text"] = np.zeros((0, dim), np.float32)
    cols["texts"] = np.array([], dtype=object)
    cols["labels"] = np.array([], dtype=object)
    for col, kind in header["meta_schema"].items():
        cols[f"meta/{col}"] = _encode_meta(kind, [], 0) if kind in ("float", "int") else np.array([], dtype=object)
    return cols


def _write_header(f: h5py.File, header: Mapping[str, Any]) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["dim"] = int(header["dim"])
    f.attrs["has_text"] = bool(header["has_text"])
    f.attrs["unit_norm"] = bool(header.get("unit_norm", False))
    f.attrs["store_uuid"] = header["store_uuid"]
    f.attrs["meta_schema"] = json.dumps(header["meta_schema"])
    f.attrs["merged_upto"] = int(header["merged_upto"])
    f.attrs["n_rows"] = int(header.get("n_rows", 0))
    prov = header["provenance"]
    f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
    for key, value in prov.items():  # also one attribute each, readable with h5dump / HDFView
        f.attrs[f"provenance.{key}"] = value if isinstance(value, (str, int, float)) else json.dumps(value)


def _write_main(f: h5py.File, header: Mapping[str, Any], cols: Mapping[str, np.ndarray], dim: int) -> None:
    _write_header(f, header)
    _write_rows(f, cols, dim)


def _write_part(f: h5py.File, store_uuid: str, lo: int, hi: int, level: int,
                cols: Mapping[str, np.ndarray], dim: int) -> None:
    f.attrs.update({"store_uuid": store_uuid, "lo": lo, "hi": hi, "level": level})
    _write_rows(f, cols, dim)


def _copy_segments(f: h5py.File, segments: Sequence[_Segment], store: EmbeddingStore,
                   attrs: Mapping[str, Any] | None) -> None:
    """Write the concatenation of ``segments`` into ``f`` block by block (bounded memory)."""
    if attrs:
        f.attrs.update(dict(attrs))
    total = sum(s.n for s in segments)
    names = ["ids", "ecg"] + (["text"] if store.has_text else []) + ["texts", "labels"]
    names += [f"meta/{c}" for c in store.meta_schema]
    block = 1 << 16
    for name in names:
        with _open_h5(segments[0].path) as f0:
            dtype, width = f0[name].dtype, f0[name].shape[1:]
        is_str = h5py.check_string_dtype(dtype) is not None
        chunks = ((max(1, min(_chunk_rows(store.dim), total)),) + width) if width else (max(1, min(65536, total)),)
        dst = f.create_dataset(name, shape=(total,) + width, maxshape=(None,) + width,
                               dtype=_STR if is_str else dtype, chunks=chunks, fletcher32=not is_str)
        pos = 0
        for seg in segments:
            with _open_h5(seg.path) as src:
                ds = src[name]
                for a in range(0, seg.n, block):
                    b = min(seg.n, a + block)
                    dst[pos + a:pos + b] = ds[a:b]
            pos += seg.n
        _hook("mid-write")


def _read_header(path: Path) -> dict[str, Any]:
    with _open_h5(path) as f:
        try:
            return _header_of(f, path)
        except StoreError:
            raise
        except _DAMAGE as e:
            raise _damaged(path, "header", e) from e


def _header_of(f: h5py.File, path: Path) -> dict[str, Any]:
    a = f.attrs
    if a.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not an etp-search embedding store (another HDF5 file?); point --store at a "
                         "store file, or at a new path to create one")
    version = int(a.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise StoreError(f"store {path} has format version {version}, this etp-search reads {FORMAT_VERSION}; "
                         f"{_REBUILD_HINT}")
    try:
        return {"dim": int(a["dim"]), "has_text": bool(a["has_text"]), "unit_norm": bool(a.get("unit_norm", False)),
                "store_uuid": str(a["store_uuid"]),
                "meta_schema": json.loads(a["meta_schema"]), "provenance": json.loads(a["provenance"]),
                "merged_upto": int(a["merged_upto"]), "n_rows": int(f["ids"].shape[0])}
    except _DAMAGE as e:
        raise StoreError(f"store {path} has a damaged header ({str(e).splitlines()[0][:80] if str(e) else e!r}); "
                         f"{_REBUILD_HINT}") from e


def _canon(value: Any) -> Any:
    """Comparable form: JSON strings decoded, dict key order ignored, ints/floats unified."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, (dict, list)):
                value = decoded
    value = json.loads(json.dumps(value, sort_keys=True, default=str))
    return _num(value)


def _num(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 100 and 100.0 are the same sampling rate
    if isinstance(value, dict):
        return {k: _num(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_num(v) for v in value]
    return value


def _short(value: Any) -> str:
    if value is None:
        return "missing"
    s = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return s if len(s) <= 16 else s[:12] + "…"

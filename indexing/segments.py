"""The store's segment machinery: part files, tier merges, compaction, the writer lock, re-scans.

Layout on disk (``STORE`` is the path the user names, e.g. ``etp-data/store.h5``)::

    STORE                 main file: header (provenance, schema, uuid) + rows merged by compact()
    STORE.parts/          one small HDF5 file per appended batch (or per merge of batches)
        p0000000000-0000000000-L0.h5     batch sequence numbers lo-hi, merge level
    STORE.lock            advisory lock held by the (single) writer

Why not append in place: resizing an HDF5 dataset rewrites B-tree/heap metadata in several places;
a SIGKILL between those writes leaves a file h5py cannot open. Instead every file here is written
once to a temporary name, fsync'ed and ``os.replace``'d, so any file a reader can see is complete.
A batch is one part file, so a crash loses at most the batch being written, never half of it.
Parts are merged in tiers (``FANOUT`` parts of level L -> one part of level L+1), which bounds the
number of parts to ~FANOUT per level and rewrites each row O(log N) times; ``compact()`` folds
everything into a new main file. A merge result covers the sequence range of its inputs, so when a
crash leaves both the merged file and its inputs behind, readers take the covering file and the
next writer deletes the leftovers; the main file records ``merged_upto`` for the same reason.

``SegmentFiles`` is the part of ``EmbeddingStore`` that knows about files; ``indexing.store`` adds
the schema, the column reads and appends on top.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import h5py
import numpy as np

from indexing._io import atomic_h5, crash_point
from indexing.columns import (DAMAGE, REBUILD_HINT, Vanished, _column_args, _damaged, _header_of, _open_h5,
                              _write_header)
from indexing.errors import StoreError

if TYPE_CHECKING:
    from indexing.idmap import IdMap

logger = logging.getLogger("indexing.store")

FANOUT = 8
_PART_RE = re.compile(r"^p(\d{10})-(\d{10})-L(\d+)\.h5$")
#: A reader that finds a file gone (merged or compacted by the writer meanwhile) re-scans this
#: many times, with short growing pauses, before it gives up.
READ_RETRIES = 6
_LOCK_RETRIES = 10  # the writer lock is retried briefly: a reader may probe it for a moment
T = TypeVar("T")


class _Segment:
    """One file holding a contiguous run of rows (the main file or a part)."""

    __slots__ = ("path", "start", "n", "lo", "hi", "level")

    def __init__(self, path: Path, start: int, n: int, lo: int = -1, hi: int = -1, level: int = -1):
        self.path, self.start, self.n, self.lo, self.hi, self.level = path, start, n, lo, hi, level


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
            raise Vanished(f"store parts folder {parts_dir} is damaged (batch {expect} missing before {p.name}); "
                             f"{REBUILD_HINT}")
        expect = hi + 1
    return visible, leftovers


def _copy_segments(f: h5py.File, segments: Sequence[_Segment], store: SegmentFiles,
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
        # laid out as the parts are (_column_args), so a merged or compacted file reads alike
        dst = f.create_dataset(name, shape=(total,) + width, **_column_args(total, width, dtype, store.dim))
        pos = 0
        for seg in segments:
            with _open_h5(seg.path) as src:
                ds = src[name]
                for a in range(0, seg.n, block):
                    b = min(seg.n, a + block)
                    dst[pos + a:pos + b] = ds[a:b]
            pos += seg.n
        crash_point("mid-write")


def _remove(paths: Iterable[Path]) -> None:
    """Delete files a writer no longer needs; one it cannot delete is a leftover the next writer retries."""
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _inode(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise Vanished(f"cannot read {path}: the file is gone") from e
    return st.st_ino, st.st_dev


class SegmentFiles:
    """Files, re-scans, the writer lock, merges and compaction of one store (a base of EmbeddingStore).

    Subclasses set ``path``, ``uuid``, ``dim``, ``has_text``, ``meta_schema`` and ``_header``
    before calling ``refresh``.
    """

    path: Path
    uuid: str
    dim: int
    has_text: bool
    meta_schema: dict[str, str]
    _header: dict[str, Any]
    _lock_fd: int | None
    _files: dict[Path, h5py.File]
    _segments: list[_Segment]
    #: id -> row (``indexing.idmap.IdMap``) of rows ``0..len(_row)``, built on the first id lookup
    #: (``_id_rows``), not at open.
    _row: IdMap | None = None
    _n: int
    _next_seq: int

    @property
    def parts_dir(self) -> Path:
        """``STORE.parts/``, beside the main file."""
        return Path(str(self.path) + ".parts")

    def refresh(self) -> None:
        """Re-read the file list to see rows appended by another process since open (re-scanning
        while the writer merges or compacts files under us).

        Rows keep their numbers: a refresh only adds rows at the end.
        """
        self._retry_vanished(self._load_rows_once, rescan=False)

    def _retry_vanished(self, attempt: Callable[[], T], rescan: bool) -> T:
        """``attempt()``, tried again after a short, growing pause (and a ``refresh`` first when
        ``rescan``) while a file it needs was merged or compacted away by the writer."""
        for i in range(READ_RETRIES):
            try:
                return attempt()
            except Vanished as e:
                if i == READ_RETRIES - 1:
                    raise self._transient_failure(e) from e
                logger.debug("store files changed while reading (%s); re-scanning", e)
                time.sleep(0.01 * 2 ** i)
                if rescan:
                    self.refresh()
        raise AssertionError("unreachable")

    def _load_rows_once(self) -> None:
        self._close_files()  # the main file may have been replaced by a compaction
        # Header, ids and later reads of the main file all go through this one handle, so a
        # compaction that replaces the file meanwhile cannot pair a new header with old parts.
        inode = _inode(self.path)
        main = _open_h5(self.path)
        try:
            header = _header_of(main, self.path)
            if header["store_uuid"] != self.uuid:
                raise StoreError(f"store {self.path} was recreated by another process while open; "
                                 "run the command again")
            main_rows = int(main["ids"].shape[0])  # ids are read when asked for, not here
        except BaseException as e:
            main.close()
            if isinstance(e, DAMAGE) and not isinstance(e, StoreError):  # RecordNotFoundError is a KeyError
                raise _damaged(self.path, "record ids", e) from e
            raise
        self._files[self.path] = main
        self._header = header
        merged_upto = int(header["merged_upto"])
        visible, _ = _scan_parts(self.parts_dir, merged_upto)
        if _inode(self.path) != inode:
            # A compaction replaced the main file (and deleted the parts it folded in) between
            # opening it and listing the parts: the old main with no parts would look empty.
            main.close()
            self._files.pop(self.path, None)
            raise Vanished(f"store {self.path} was compacted while being opened")
        segments = [_Segment(self.path, 0, main_rows)]
        start = main_rows
        for lo, hi, level, p in visible:
            with _open_h5(p) as f:
                try:
                    if f.attrs.get("store_uuid") != self.uuid:
                        raise StoreError(f"part {p} belongs to another store; {REBUILD_HINT}")
                    part_rows = int(f["ids"].shape[0])
                except DAMAGE as e:
                    raise _damaged(p, "record ids", e) from e
            segments.append(_Segment(p, start, part_rows, lo, hi, level))
            start += part_rows
        self._segments = segments
        # Rows keep their numbers across re-scans (only appends at the end), so an id map already
        # built stays valid and is extended on its next use.
        if self._row is not None and len(self._row) > start:
            self._row = None
        self._n = start
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

    def _read_sel(self, name: str, sel: np.ndarray | slice, width: int | None, dtype: Any) -> np.ndarray:
        """Rows ``sel`` of dataset ``name`` across the segments; a read that fails carries the
        segment's file as ``exc.segment_file``, so the damage names the part, not only the store."""
        where: list[Path | None] = [None]  # the segment being read (a local: readers share a store)
        try:
            return self._read_segments(name, sel, width, dtype, where)
        except DAMAGE as e:
            if where[0] is not None:
                e.segment_file = where[0]  # type: ignore[union-attr]
            raise

    def _read_segments(self, name: str, sel: np.ndarray | slice, width: int | None, dtype: Any,
                       where: list[Path | None]) -> np.ndarray:
        if isinstance(sel, slice):
            lo, hi = sel.start, max(sel.start, sel.stop)
            out = np.empty((hi - lo,) + ((width,) if width else ()), dtype=dtype)
            for seg in self._segments:
                a, b = max(lo, seg.start), min(hi, seg.start + seg.n)
                if a >= b:
                    continue
                where[0] = seg.path
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
            where[0] = seg.path
            ds = self._file(seg.path)[name]
            if len(uniq) > 0.25 * seg.n:  # dense selection: one contiguous read beats fancy indexing
                block = ds[int(uniq[0]):int(uniq[-1]) + 1][uniq - uniq[0]]
            else:
                block = ds[uniq]
            out[order[a:b]] = block[inv]
        return out

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
        if self._lock_fd is None:
            self._acquire_lock()
            self.refresh()
            _, leftovers = _scan_parts(self.parts_dir, int(self._header["merged_upto"]))
            for p in leftovers:
                logger.info("removing leftover %s from an interrupted write", p.name)
            _remove(leftovers)
            _remove(self.path.parent.glob(f".tmp-*-{self.path.name}"))

    def _merge_tiers(self) -> None:
        """Merge the trailing FANOUT parts of one level into a part of the next level."""
        while True:
            parts = self._segments[1:]
            if len(parts) < FANOUT:
                return
            tail = parts[-FANOUT:]
            level = tail[0].level
            if any(s.level != level for s in tail):
                return
            lo, hi = tail[0].lo, tail[-1].hi
            final = self.parts_dir / f"p{lo:010d}-{hi:010d}-L{level + 1}.h5"
            crash_point("before-merge")
            atomic_h5(final, lambda f: _copy_segments(f, tail, self, {"store_uuid": self.uuid, "lo": lo,
                                                                         "hi": hi, "level": level + 1}),
                       self.parts_dir)
            crash_point("after-merge")
            self._close_files(s.path for s in tail)
            _remove(s.path for s in tail)
            merged = _Segment(final, tail[0].start, sum(s.n for s in tail), lo, hi, level + 1)
            self._segments = self._segments[:-FANOUT] + [merged]
            logger.debug("merged parts %d-%d into level %d", lo, hi, level + 1)

    def compact(self) -> None:
        """Fold all parts into a new main file (written aside, then renamed) and delete them."""
        self.begin_write()
        if len(self._segments) == 1:
            return
        header = dict(self._header)
        header["merged_upto"] = self._segments[-1].hi
        header["n_rows"] = self._n
        t0 = time.perf_counter()
        crash_point("before-compact")

        def write(f: h5py.File) -> None:
            _write_header(f, header)
            _copy_segments(f, self._segments, self, None)

        atomic_h5(self.path, write)
        crash_point("after-compact")
        _remove(s.path for s in self._segments[1:])
        logger.info("compacted %s: %d rows in %.1fs", self.path, self._n, time.perf_counter() - t0)
        self.refresh()

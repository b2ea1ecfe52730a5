"""FAISS index files beside a store: written by the writer (``index``) only, checked on every load.

``STORE.ecg.faiss`` / ``STORE.text.faiss`` hold the index; ``*.faiss.json`` (the sidecar) holds
what it is: the store's uuid, which vectors (ecg / text), the row count it covers, the file's size
and SHA-256, and the build facts (factory, nlist, nprobe, recall@10). A load checks all of them, so
a truncated, bit-flipped or swapped file is never searched: it raises IndexStaleError, and the
read-only view (``indexing.view``) searches the store exactly instead, with one line naming
``--rebuild-index``. A file this user has verified before and that is still the same file (inode,
size, mtime, ctime) is not re-hashed (``indexing.verified``; ``ETP_VERIFY=full`` always hashes).

How an index is made is pluggable: ``build_or_update(..., builder=)`` takes any ``IndexBuilder``
(store, which, factory) -> (index, info); the default is ``indexing.build.store_builder``, which
streams the store's vectors in chunks into ``indexing.build.build_index``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from indexing import verified
from indexing._io import atomic_write, check_file_path
from indexing.errors import IndexingError, IndexStaleError
from indexing.build import store_builder
from indexing.faiss_index import (DEFAULT_CHUNK_ROWS, REBUILD_HINT, _ivf, check_factory, faiss, lists_path, read_faiss,
                                  update_index)
from indexing.plan import FLAT_MAX_ROWS
from indexing.gpu import UseGpu, is_gpu_index, resolve_use_gpu, to_cpu, to_gpu

logger = logging.getLogger(__name__)

Which = Literal["ecg", "text"]
#: Version 2 added ``sha256`` and ``which``; older sidecars are stale (the writer rebuilds them).
SIDECAR_VERSION = 2
_HASH_BLOCK = 1 << 22

#: (store, which, factory) -> (index over rows 0..len(store), info); see ``indexing.build.store_builder``.
IndexBuilder = Callable[[Any, str, str], "tuple[Any, dict]"]


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def default_index_path(store_path: str | os.PathLike, which: str) -> Path:
    return Path(f"{store_path}.{which}.faiss")


def _check_which(which: str) -> None:
    if which not in ("ecg", "text"):
        raise IndexingError(f"unknown vector kind {which!r}; use 'ecg' or 'text'")


def _digest_fd(fd: int) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    os.lseek(fd, 0, os.SEEK_SET)
    while block := os.read(fd, _HASH_BLOCK):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def ondisk_lists(index: Any) -> Any | None:
    """The ``faiss.OnDiskInvertedLists`` of an IVF index whose lists live in a file, else None."""
    ivf = _ivf(index)
    if ivf is None or ivf.invlists is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def save_index(index: Any, path: str | os.PathLike, info: dict) -> dict:
    """Write the index (from CPU) and its sidecar atomically; returns the sidecar dict.

    The index file is replaced before the sidecar; the sidecar's size and digest then no longer
    match until it is replaced too, so a crash between the two is caught by ``load_index``.
    An index with on-disk inverted lists (``indexing.build``, ``ondisk``) has its lists file moved
    to ``PATH.ivfdata`` first; the sidecar holds that file's size and SHA-256 too. A saved index
    without on-disk lists removes a ``PATH.ivfdata`` left by an earlier one.
    """
    path = Path(path)
    check_file_path(path, "index", "store.h5.ecg.faiss")
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = to_cpu(index)
    od = ondisk_lists(cpu)
    lists_file = lists_path(path)
    lists_meta: dict[str, Any] | None = None
    if od is not None:
        src = Path(od.filename)
        if src.resolve() != lists_file.resolve():
            # Readers that mapped the old lists file keep its inode; new ones see this file and, until
            # the sidecar below is replaced, a digest that differs (torn: retried, then exact search).
            try:
                os.replace(src, lists_file)
            except OSError:  # another filesystem (an index path outside the store's folder)
                import shutil

                shutil.move(str(src), str(lists_file))
            od.filename = str(lists_file)
        lists_digest, lists_bytes = _digest_path(lists_file)
        lists_meta = {"file": lists_file.name, "bytes": lists_bytes, "sha256": lists_digest}
    digest: list[str] = []

    def write(tmp: Path) -> None:
        faiss.write_index(cpu, str(tmp))
        digest.append(_digest_path(tmp)[0])

    atomic_write(path, write)
    meta = dict(info)
    meta.update(sidecar_version=SIDECAR_VERSION, n_rows=int(cpu.ntotal), dim=int(cpu.d),
                file_bytes=path.stat().st_size, sha256=digest[0], saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta.pop("ivfdata", None)
    if lists_meta is not None:
        meta["ivfdata"] = lists_meta
    for key in ("on_gpu", "saved_to_disk"):  # facts about this process's copy only
        meta.pop(key, None)
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text))
    if lists_meta is None:
        lists_file.unlink(missing_ok=True)  # lists of an earlier on-disk index of this path
    logger.info("saved index %s (%d rows, %.1f MB%s)", path, cpu.ntotal, meta["file_bytes"] / 1e6,
                f" + {lists_meta['bytes'] / 1e6:.1f} MB of lists in {lists_file.name}" if lists_meta else "")
    return meta


def _digest_path(path: Path) -> tuple[str, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _digest_fd(fd)
    finally:
        os.close(fd)


def _check_digest(path: Path, fd: int, expected: str, expected_bytes: int, what: str, against: str,
                  full: bool = False) -> None:
    """_Torn unless the open file ``fd`` has ``expected_bytes`` bytes and SHA-256 ``expected``
    (as ``against``, the sidecar, says). It is hashed, unless this user verified the very same file
    (same inode, size, mtime, ctime) to have ``expected`` before (``indexing.verified``); a digest
    that matches is remembered for the next load. ``full`` hashes whatever was remembered."""
    st = os.fstat(fd)
    if not full and verified.is_verified(path, st, expected):
        digest, size = expected, int(st.st_size)
    else:
        digest, size = _digest_fd(fd)
        if digest == expected and size == st.st_size:
            verified.remember(path, st, digest)
    if size != expected_bytes or digest != expected:
        raise _Torn(f"{what} {path} is damaged or from an interrupted write (its "
                    f"{'size' if size != expected_bytes else 'SHA-256'} differs from {against}); {REBUILD_HINT}")


class _Torn(IndexStaleError):
    """Index file and sidecar disagree: damaged, or caught mid-replace by the writer (retried)."""


class IndexAheadError(IndexStaleError):
    """The saved index covers more rows than the caller's view of the store (the writer moved on)."""


def load_index(path: str | os.PathLike, store_uuid: str, n_rows: int, *, which: str | None = None,
               allow_behind: bool = False, use_gpu: UseGpu = False, full: bool = False) -> tuple[Any, dict]:
    """Load an index and check it against its store and its sidecar.

    Raises IndexStaleError (the message names ``--rebuild-index``) when the file or sidecar is
    missing, unreadable, of an older sidecar version, of another store or other vectors, when the
    file's size or SHA-256 differs from the sidecar's, or when it covers more rows than ``n_rows``
    (IndexAheadError) or fewer, unless ``allow_behind`` (the caller searches rows
    ``info["n_rows"]:n_rows`` some other way, or adds them with ``update_index``). ``full``: hash
    the files even where this user verified them before (`info --verify`).
    """
    path = Path(path)
    check_file_path(path, "index", "store.h5.ecg.faiss")
    err: IndexStaleError | None = None
    for attempt in range(3):  # the writer replacing index + sidecar meanwhile can make one try see a mix
        try:
            index, info = _load_checked(path, store_uuid, n_rows, which, allow_behind, full)
            break
        except _Torn as e:
            err = e
            time.sleep(0.05 * (attempt + 1))
    else:
        assert err is not None
        raise IndexStaleError(str(err))
    if resolve_use_gpu(use_gpu):
        index = to_gpu(index)
    info["on_gpu"] = is_gpu_index(index)
    return index, info


def _load_checked(path: Path, store_uuid: str, n_rows: int, which: str | None,
                  allow_behind: bool, full: bool = False) -> tuple[Any, dict]:
    side = sidecar_path(path)
    if not path.exists() or not side.exists():
        raise IndexStaleError(f"no index at {path} (or its sidecar {side.name}); {REBUILD_HINT}")
    try:
        info = json.loads(side.read_text())
        expected_bytes, sidecar_rows = int(info["file_bytes"]), int(info["n_rows"])
        version = int(info.get("sidecar_version", 0))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise IndexStaleError(f"index sidecar {side} is unreadable ({e}); {REBUILD_HINT}") from e
    if not isinstance(info, dict):
        raise IndexStaleError(f"index sidecar {side} is unreadable; {REBUILD_HINT}")
    if version < SIDECAR_VERSION or not isinstance(info.get("sha256"), str):
        raise IndexStaleError(f"index {path} was saved by an older etp-search (no digest); {REBUILD_HINT}")
    if info.get("store_uuid") != store_uuid:
        raise IndexStaleError(f"index {path} was built for another store (uuid {info.get('store_uuid')}); {REBUILD_HINT}")
    if which is not None and info.get("which") != which:
        raise IndexStaleError(f"index {path} holds {info.get('which')} vectors, not {which} "
                              f"(files swapped or renamed?); {REBUILD_HINT}")
    if sidecar_rows > n_rows:
        raise IndexAheadError(f"index {path} holds {sidecar_rows} rows but the store has {n_rows}; {REBUILD_HINT}")
    if sidecar_rows < n_rows and not allow_behind:
        raise IndexStaleError(f"index {path} holds {sidecar_rows} rows but the store has {n_rows}; {REBUILD_HINT}")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as e:
        raise _Torn(f"index {path} disappeared while loading; {REBUILD_HINT}") from e
    try:
        # Hash and read the same open file: a writer replacing it meanwhile cannot slip another in.
        _check_digest(path, fd, info["sha256"], expected_bytes, "index", "its sidecar", full)
        lists = info.get("ivfdata")
        if lists is not None:
            index = _read_ondisk(path, lists, side.name, full)
        else:
            proc = f"/proc/self/fd/{fd}"
            index = read_faiss(path, source=proc if os.path.exists(proc) else None, error=_Torn)
    finally:
        os.close(fd)
    if lists is None and ondisk_lists(index) is not None:
        raise IndexStaleError(f"index {path} keeps its lists in a file its sidecar does not name; {REBUILD_HINT}")
    if int(index.ntotal) != sidecar_rows or int(index.d) != int(info.get("dim", index.d)):
        raise _Torn(f"index {path} does not match its sidecar ({index.ntotal} rows); {REBUILD_HINT}")
    return index, info


def _read_ondisk(path: Path, lists: Any, sidecar_name: str, full: bool = False) -> Any:
    """An index whose inverted lists live in ``PATH.ivfdata``: that file checked against the
    sidecar's size and SHA-256, then memory-mapped (``IO_FLAG_ONDISK_SAME_DIR``: the folder may move)."""
    lists_file = lists_path(path)
    try:
        expected_bytes, expected = int(lists["bytes"]), str(lists["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise IndexStaleError(f"index sidecar {sidecar_name} is unreadable ({e}); {REBUILD_HINT}") from e
    try:
        fd = os.open(lists_file, os.O_RDONLY)
    except FileNotFoundError as e:
        raise _Torn(f"index lists file {lists_file} is missing; {REBUILD_HINT}") from e
    try:
        _check_digest(lists_file, fd, expected, expected_bytes, "index lists file", sidecar_name, full)
    finally:
        os.close(fd)
    return read_faiss(path, faiss.IO_FLAG_ONDISK_SAME_DIR, error=_Torn)


# ----------------------------------------------------------------------------- the writer's side


def build_or_update(store: Any, which: str = "ecg", index_path: str | os.PathLike | None = None,
                    factory: str = "auto", *, use_gpu: UseGpu = "auto", rebuild: bool = False,
                    ivf_threshold: int = FLAT_MAX_ROWS, nprobe: int | None = None, seed: int = 0,
                    builder: IndexBuilder | None = None, add_chunk: int = DEFAULT_CHUNK_ROWS,
                    ondisk: bool | None = None) -> tuple[Any, dict]:
    """Bring ``store``'s ``which`` index file up to date and save it: the writer's job, under the lock.

    Loads the saved index when it is current and adds the rows appended since (in chunks of
    ``add_chunk``); (re)builds with ``builder`` when it is missing, damaged, of another factory, or
    when "auto" crosses the flat -> IVF threshold or the store grew 4x past the IVF training.
    An index with on-disk inverted lists is rebuilt, not extended, when rows were appended (the
    lists file is memory-mapped by readers, so it is never written in place); ``ondisk`` (when not
    None) rebuilds an index whose builder was asked otherwise (``info["ondisk_requested"]``).

    Raises StoreError when another process holds the store's write lock.
    """
    _check_which(which)
    n = len(store)
    if n == 0:
        store.check_not_empty()
    path = Path(index_path) if index_path else default_index_path(store.path, which)
    check_file_path(path, "index", f"{Path(store.path).name}.{which}.faiss")
    check_factory(factory, store.dim, n)
    builder = builder or store_builder(ivf_threshold=ivf_threshold, nprobe=nprobe, use_gpu=use_gpu, seed=seed)
    was_writer = store.holds_write_lock
    with store.write_lock(wait=True):
        if not was_writer:
            store.refresh()  # rows another writer appended before we took the lock
        n = len(store)
        reason = "--rebuild-index was given" if rebuild else None
        index = info = None
        if reason is None:
            try:
                index, info = load_index(path, store.uuid, n, which=which, allow_behind=True, use_gpu=use_gpu)
            except IndexStaleError as e:
                reason = str(e)
        if index is not None and info is not None:
            if factory != info.get("factory_requested", info.get("factory")):
                reason = f"factory {factory!r} requested, the index was built with {info.get('factory_requested')!r}"
            elif factory == "auto" and info.get("factory") == "Flat" and n >= ivf_threshold:
                reason = f"the store grew past {ivf_threshold} rows: switching from exact to IVF"
            elif factory == "auto" and "nlist" in info and n > 4 * int(info.get("n_rows_at_build", n)):
                reason = f"the store grew more than 4x since the IVF lists were trained ({info['n_rows_at_build']} rows)"
            elif ondisk is not None and bool(info.get("ondisk_requested", False)) != bool(ondisk):
                reason = f"on-disk inverted lists {'requested' if ondisk else 'no longer requested'}"
            elif "ivfdata" in info and int(index.ntotal) < n:
                reason = "on-disk inverted lists are rebuilt, not extended in place (readers map that file)"
        if reason is None and index is not None and info is not None:
            have = int(index.ntotal)
            if have == n:
                return index, dict(info, saved_to_disk=False)
            t0 = time.perf_counter()
            for a in range(have, n, add_chunk):
                b = min(n, a + add_chunk)
                update_index(index, store.vectors(which, slice(a, b)), a)
            info.update(n_rows=n, added_since_build=int(info.get("added_since_build", 0)) + n - have)
            logger.info("added %d new rows to %s in %.1fs", n - have, path, time.perf_counter() - t0)
        else:
            if path.exists() or rebuild:
                logger.warning("rebuilding %s: %s", path, reason)
            else:
                logger.info("building %s", path)
            index, info = builder(store, which, factory)
            if int(index.ntotal) != n:
                raise IndexingError(f"the index builder returned {index.ntotal} rows for a store of {n}")
            info = dict(info, store_uuid=store.uuid, which=which, added_since_build=0)
            info.setdefault("factory_requested", factory)
        on_gpu = is_gpu_index(index)
        saved = save_index(index, path, info)
    return index, dict(saved, on_gpu=on_gpu, saved_to_disk=True)



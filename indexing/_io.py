"""Crash-safe file writes for the whole project, and path checks.

One primitive, ``publish(tmp, final)``: fsync what was written under a temporary name, rename it
onto the final name with ``os.replace`` and fsync the folder, so a reader (or a run after a kill)
sees the old file or the new one, never half of one. Every writer builds on it:

- ``atomic_write(final, write)``: any file; ``write(tmp)`` fills the temporary path (FAISS,
  safetensors, matplotlib, sidecars). ``atomic_write_bytes`` is its bytes case (JSON, metrics).
- ``atomic_h5(final, write)``: an HDF5 file written whole (the store's main file and parts).
- ``replace_dir(tmp, final)`` / ``repair_dir(final)``: a folder written whole (a checkpoint
  folder); a crash between its two renames is repaired by ``repair_dir`` on the next run.

Temporary files are named ``.tmp-<uuid>-<final name>`` in the final folder (or ``tmp_dir``), so
they keep the final suffix (matplotlib picks its format from it), are hidden, and are recognisable
as leftovers. ``indexing/`` imports nothing of the rest of the project, so ``etp_search/`` and
``training/`` write through this module too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid as uuid_mod
from collections.abc import Callable
from pathlib import Path

import h5py

from indexing._crash import crash_point  # noqa: F401 - the one crash hook, re-exported for the store's modules
from indexing.errors import IndexingError

__all__ = ["atomic_h5", "atomic_write", "atomic_write_bytes", "check_file_path", "fsync_path", "publish",
           "repair_dir", "replace_dir"]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
    fsync_path(path)


def publish(tmp: Path, final: Path, before_replace: Callable[[], None] | None = None) -> None:
    """The one primitive: make ``tmp`` (a file, or a folder and its files) durable, rename it onto
    ``final`` and make the rename durable. ``before_replace`` runs between (a crash point)."""
    _fsync_tree(tmp)
    if before_replace is not None:
        before_replace()
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders
        fsync_path(final.parent)


def atomic_write(final: Path, write: Callable[[Path], object], tmp_dir: Path | None = None,
                 before_replace: Callable[[], None] | None = None) -> None:
    """Call ``write(tmp)`` on a temporary name, then ``publish`` it onto ``final``.

    Readers therefore only ever see a complete file (the old one or the new one). The temporary
    file is removed when ``write`` (or anything before the rename) fails. ``write`` creates the
    file itself, so it gets the ordinary umask permissions.
    """
    final = Path(final)
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else final.parent
    tmp = tmp_dir / f".tmp-{uuid_mod.uuid4().hex}-{final.name}"
    try:
        write(tmp)
        publish(tmp, final, before_replace)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and (exc.filename == str(tmp) or (exc.filename is None and str(tmp) in str(exc))):
            exc.filename = str(final)  # the user asked for FINAL; the temporary name means nothing to them
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically (its folder is created when missing)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(final, lambda tmp: tmp.write_bytes(data))


def atomic_h5(final: Path, write: Callable[[h5py.File], None], tmp_dir: Path | None = None) -> None:
    """Write an HDF5 file whole under a temporary name and publish it (crash point ``before-replace``)."""

    def write_file(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            write(f)

    atomic_write(final, write_file, tmp_dir, before_replace=lambda: crash_point("before-replace"))


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap the fully written folder ``tmp`` in for ``final``.

    A folder cannot be renamed onto a non-empty one, so the old one first moves to ``FINAL.old``;
    a crash between the two renames leaves ``FINAL.old`` alone, which ``repair_dir`` puts back.
    """
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    publish(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def repair_dir(final: Path) -> None:
    """Undo what a crash inside ``replace_dir`` left: restore ``FINAL.old``, delete ``FINAL.tmp*``."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    for tmp in final.parent.glob(f"{final.name}.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def check_file_path(path: Path, what: str, example: str, error: type[IndexingError] = IndexingError) -> None:
    """Raise ``error`` when ``path`` names a folder (h5py/faiss would fail with an obscure message)."""
    if path.is_dir():
        raise error(f"{what} path {path} is a folder; pass a file path such as {path / example}")

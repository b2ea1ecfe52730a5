"""File helpers shared by the store and the FAISS index: fsync, atomic replace, path checks, the crash hook."""

from __future__ import annotations

import contextlib
import os
import uuid as uuid_mod
from collections.abc import Callable
from pathlib import Path

from indexing._crash import crash_point  # noqa: F401 - the one crash hook, re-exported for the store's modules
from indexing.errors import IndexingError


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: Path, write: Callable[[Path], None], tmp_dir: Path | None = None,
                 before_replace: Callable[[], None] | None = None) -> None:
    """Call ``write(tmp)`` on a temporary name, fsync it and rename it onto ``final``.

    Readers therefore only ever see a complete file (the old one or the new one).
    """
    tmp_dir = tmp_dir or final.parent
    tmp = tmp_dir / f".tmp-{uuid_mod.uuid4().hex}-{final.name}"
    try:
        write(tmp)
        fsync_path(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, final)
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders
            fsync_path(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_file_path(path: Path, what: str, example: str, error: type[IndexingError] = IndexingError) -> None:
    """Raise ``error`` when ``path`` names a folder (h5py/faiss would fail with an obscure message)."""
    if path.is_dir():
        raise error(f"{what} path {path} is a folder; pass a file path such as {path / example}")

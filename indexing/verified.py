"""Remembered SHA-256 checks: a file verified once is not re-hashed while it stays the same file.

Every load of a FAISS index file (and its ``.ivfdata`` lists) checks its SHA-256 against the
sidecar. At 5M vectors that is ~1.4 GB read per ``etp-search query`` process, seconds before the
first result. This module remembers, per user, which files were verified: the file's identity
(device, inode, size, mtime and ctime in nanoseconds) and the digest it had. A later load whose
file has the same identity and whose sidecar names the same digest skips the hash.

What it still catches: any write to the file through the filesystem (in place, truncation, an
atomic replace, a copy or a swap) changes its inode, size, mtime or ctime; ``ctime`` cannot be set
back by a user. What it does not: corruption below the filesystem (a failing disk flipping a bit
without a write). ``ETP_VERIFY=full`` (``full_verify_requested``) re-hashes on every load.

Racy writes (the git index problem): a file written within ``_SETTLE_NS`` of its verification is
not remembered, so a write in the same timestamp tick as the check can never share its identity.

The record lives in ``$ETP_SEARCH_CACHE`` (else ``$XDG_CACHE_HOME/etp-search``, else
``~/.cache/etp-search``) as ``verified-files.json``, written atomically; an unreadable or
unwritable record is ignored (the file is then hashed, as without this module).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from indexing._io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["cache_file", "full_verify_requested", "identity", "is_verified", "remember"]

RECORD_NAME = "verified-files.json"
_SETTLE_NS = 2_000_000_000
_MAX_ENTRIES = 256


def cache_file() -> Path:
    """Where this user's record of verified files lives."""
    root = os.environ.get("ETP_SEARCH_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "etp-search") if xdg else str(Path.home() / ".cache" / "etp-search")
    return Path(root) / RECORD_NAME


def full_verify_requested() -> bool:
    """``ETP_VERIFY=full``: hash every file on every load, trusting no record."""
    return os.environ.get("ETP_VERIFY", "").strip().lower() == "full"


def identity(st: os.stat_result) -> list[int]:
    """What must stay the same for a verified file to count as the same bytes."""
    return [int(st.st_dev), int(st.st_ino), int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns)]


def _read() -> dict[str, dict]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def is_verified(path: str | os.PathLike, st: os.stat_result, sha256: str) -> bool:
    """Was the file at ``path``, with exactly this identity, verified to have digest ``sha256``?"""
    if full_verify_requested():
        return False
    entry = _read().get(os.path.realpath(path))
    return (isinstance(entry, dict) and entry.get("sha256") == sha256
            and entry.get("identity") == identity(st))


def remember(path: str | os.PathLike, st: os.stat_result, sha256: str) -> bool:
    """Record that the file with identity ``st`` hashed to ``sha256``; False when not recorded
    (changed too recently to be told apart from a later write, or the record is not writable)."""
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _SETTLE_NS:
        return False
    data = _read()
    data[os.path.realpath(path)] = {"identity": identity(st), "sha256": sha256, "at": time.time()}
    if len(data) > _MAX_ENTRIES:  # keep the most recently verified
        keep = sorted(data, key=lambda k: float(data[k].get("at", 0)) if isinstance(data[k], dict) else 0.0)
        for k in keep[:len(data) - _MAX_ENTRIES]:
            del data[k]
    return _write(data)


def _write(data: dict) -> bool:
    target = cache_file()
    text = json.dumps(data, indent=1, sort_keys=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: tmp.write_text(text))
    except OSError as e:  # a read-only home: verification just is not remembered
        logger.debug("cannot record verified files in %s (%s)", target, e)
        return False
    return True

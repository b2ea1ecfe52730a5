"""Crash points: the one test hook of every writer (store parts and merges, FAISS files, signal cache, trainer).

A writer calls ``crash_point("name")`` at each step whose interruption must be survivable. Nothing
sets a hook outside tests, so a point costs one global read. A test either sets ``hook`` to its own
function (called with each point's name) or, the usual case, wraps the run in ``crash_at``::

    with crash_at("after-batch", nth=2):          # the 2nd committed batch of a signal cache
        build_cache(...)                          # raises CrashRequested there

    with crash_at("mid-write", nth=3, exit_code=17):   # in a driver process: dies like SIGKILL
        store.append(...)

The points: ``mid-write``, ``before-part``, ``after-part``, ``before-replace``, ``before-merge``,
``after-merge``, ``before-compact``, ``after-compact`` (store, indexing/); ``after-batch`` (signal
cache, after a batch is committed); ``after-step`` (trainer, after an optimizer step, before any save).

It lives in ``indexing/`` because ``indexing/`` imports nothing of the rest of the project, and
``etp_search/`` and ``training/`` may import ``indexing/``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

__all__ = ["CrashRequested", "crash_at", "crash_point", "hook"]

#: The test hook: called with a point's name at each crash point; ``None`` in normal runs.
hook: Callable[[str], None] | None = None


class CrashRequested(RuntimeError):
    """Raised by ``crash_at``'s hook: the test asked for a crash at this point."""


def crash_point(point: str) -> None:
    """Call the test hook, if one is set, at a named step of a write."""
    if hook is not None:
        hook(point)


@contextlib.contextmanager
def crash_at(point: str, nth: int = 1, exit_code: int | None = None) -> Iterator[None]:
    """Within the block, the ``nth`` arrival at ``point`` raises ``CrashRequested`` (or, with
    ``exit_code``, ends the process at once with ``os._exit``: no ``finally``, no file closed).
    Hooks do not nest.
    """
    global hook
    if nth < 1:
        raise ValueError(f"nth counts arrivals from 1; got {nth}")
    if hook is not None:
        raise RuntimeError("a crash hook is already set; crash_at does not nest")
    seen = 0

    def fire(p: str) -> None:
        nonlocal seen
        if p != point:
            return
        seen += 1
        if seen == nth:
            if exit_code is not None:
                os._exit(exit_code)
            raise CrashRequested(f"crash requested at {point} #{nth}")

    hook = fire
    try:
        yield
    finally:
        hook = None

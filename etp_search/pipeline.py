"""The one read -> preprocess pipeline, shared by `prepare` (signal cache) and `index` (store).

A torch ``DataLoader`` over record refs: worker processes (``workers`` > 0) each read and
preprocess records and hand back whatever ``transform`` makes of them, in the refs' order. A
record that fails to read or preprocess is a counted skip with a short stable reason (a reader's
``SkipRecord.reason``, else ``error: <ExceptionType>``, logged once), never the end of the run.
DataLoader shuts its workers down whenever the consumer stops (an error, Ctrl-C, a crash test),
which a ``multiprocessing.Pool`` fed by ``imap`` did not always do.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from etp_search.preprocess import Preset, preprocess
from etp_search.records import EcgRecord

logger = logging.getLogger(__name__)

#: Items per worker hand-off: big enough to amortise IPC, small enough to keep memory low.
CHUNK = 16


@dataclass
class Item:
    """One ref's outcome: ``value`` is ``transform(record, signal, flags)``, or ``skip`` says why not."""

    ref: str
    value: Any = None
    skip: str | None = None


#: (record, preprocessed (12, L) float32 signal, preprocessing flags) -> what the consumer needs.
Transform = Callable[[EcgRecord, np.ndarray, dict], Any]


class _Records(Dataset):
    """Map-style dataset over refs; read + preprocess + transform run inside the workers."""

    def __init__(self, reader: Any, refs: Sequence[str], preset: Preset | None, transform: Transform):
        self.reader, self.refs, self.preset, self.transform = reader, list(refs), preset, transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> Item:
        ref = self.refs[i]
        try:
            rec = self.reader.read(ref)
            if self.preset is None:  # `info`: facts about the raw record, no preprocessing
                return Item(ref, self.transform(rec, rec.signal, {}))
            x, flags = preprocess(rec.signal, rec.fs, self.preset, rec.leads)
            return Item(ref, self.transform(rec, x, flags))
        except Exception as exc:  # noqa: BLE001 - one bad file must not end a run over 800k records
            reason = getattr(exc, "reason", None)  # readers' SkipRecord carries a short stable key
            if reason is None:
                reason = f"error: {type(exc).__name__}"
                logger.warning("skipping %s: %s: %s", ref, type(exc).__name__, exc)
            return Item(ref, skip=str(reason))


def _as_list(items: list[Item]) -> list[Item]:
    return items


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker whose parent is killed (kill -9, a torchrun rank that
    fails) must not outlive it. Left alone it blocks for ever flushing a batch into the pipe nobody
    reads, holding the parent's open files (a store's lock, the launcher's stdout) so that the rerun
    waits on it. On Linux the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _init_worker(parent: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: ignore SIGINT, then die with the parent. A terminal's Ctrl-C
    reaches the whole process group; a worker killed by it made the main process fail with
    "DataLoader worker exited unexpectedly" (a traceback, exit 1) instead of its own clean
    KeyboardInterrupt. Only the main process handles the interrupt, and shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by read_records around the fork
    _die_with_parent(parent, worker_id)


def read_records(reader: Any, refs: Sequence[str], preset: Preset | None, transform: Transform, *,
                 workers: int = 0, chunk: int = CHUNK) -> Iterator[list[Item]]:
    """Chunks of ``Item`` for ``refs``, in order; ``workers`` processes (0 = in this process).

    ``preset`` None skips preprocessing (``transform`` then gets the raw signal and no flags).
    """
    if not refs:
        return iter(())
    ds = _Records(reader, refs, preset, transform)
    loader = DataLoader(ds, batch_size=max(1, chunk), shuffle=False, num_workers=max(0, int(workers)),
                        collate_fn=_as_list, prefetch_factor=2 if workers else None, persistent_workers=False,
                        worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers else None)
    if not workers:
        return iter(loader)
    # The workers start here; SIGINT stays blocked until each has set it to ignored, so a Ctrl-C
    # in between waits for this process (where it raises KeyboardInterrupt) instead of killing one.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        it = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return _shut_down_when_done(it)


def _shut_down_when_done(it: Any) -> Iterator[list[Item]]:
    """The chunks of ``it``; its workers are shut down as soon as the consumer stops, not when the
    iterator is collected. A Ctrl-C raised while waiting for a chunk kept the iterator alive in its
    traceback until after the "interrupted" line, and a second SIGINT (``timeout -s INT`` sends
    two) then landed in its ``__del__``: "Exception ignored ... KeyboardInterrupt" and a traceback."""
    try:
        yield from it
    finally:
        it._shutdown_workers()

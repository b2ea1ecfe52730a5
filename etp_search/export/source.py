"""Reader stage: dataset folder or signal cache -> preprocessed batches, skipping ids already stored."""

from __future__ import annotations

import json
import logging
import os
from functools import partial
import threading
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from etp_search.errors import DataError
from etp_search.pipeline import read_records
from etp_search.preprocess import Preset
from etp_search.readers import open_dataset
from etp_search.readers.base import note_skip
from etp_search.records import NORM_COLUMN, STORE_META_SCHEMA, RecordMeta
from etp_search.signal_cache import SignalCache, is_signal_cache

logger = logging.getLogger(__name__)

#: Metadata columns written to the store: derived from RecordMeta (one schema for cache and store),
#: plus the ECG norm the encoder adds at index time.
META_SCHEMA: dict[str, str] = {**STORE_META_SCHEMA, NORM_COLUMN: "float"}


@dataclass
class Batch:
    """One batch of preprocessed records, ready for the encoder."""

    ids: list[str]
    signals: np.ndarray  # (n, 12, L) float32
    texts: list[str]
    labels: list[dict[str, float]]
    meta: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> ids (see note_skip)


def _meta_row(meta: dict[str, Any], dataset: str, flags: dict[str, Any]) -> dict[str, Any]:
    """One store metadata row (``STORE_META_SCHEMA``) from a reader's or a cache's values."""
    return RecordMeta.from_values(meta).store_row(dataset, flags)


def _index_item(dataset: str, rec: Any, x: np.ndarray, flags: dict) -> dict[str, Any]:
    """What the encoder and the store need of one preprocessed record (runs in the pipeline's workers)."""
    return {"id": rec.id, "signal": x, "text": rec.text, "labels": dict(rec.labels),
            "meta": _meta_row(rec.meta, dataset, flags)}


def _batch(items: list[Any]) -> Batch:
    ok = [it.value for it in items if it.skip is None]
    skipped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for it in items:
        if it.skip is not None:
            note_skip(skipped, examples, it.ref, it.skip)
    sig = np.stack([v["signal"] for v in ok]) if ok else np.empty((0, 12, 0), np.float32)
    return Batch([v["id"] for v in ok], sig, [v["text"] for v in ok], [v["labels"] for v in ok],
                 [v["meta"] for v in ok], skipped, examples)


@dataclass
class Source:
    """A dataset folder or signal cache opened once: its record ids, and batches of any subset."""

    kind: str  # "dataset" | "cache"
    format_name: str
    ids: list[str]  # every record the source holds, in reading order
    summary_line: str
    _iter: Callable[[list[int]], Iterator[Batch]]

    @property
    def total(self) -> int:
        return len(self.ids)

    def todo(self, *done: Any) -> list[int]:
        """Positions of the records in none of ``done`` (what a resumed run still has to do). Each
        is a set of ids, or has ``mask(ids)`` (``writer.StoredIds``: one lookup in a store's id map)."""
        left = np.ones(len(self.ids), dtype=bool)
        for d in done:
            if hasattr(d, "mask"):
                left &= ~np.asarray(d.mask(self.ids), dtype=bool)
            else:
                left &= np.array([rid not in d for rid in self.ids], dtype=bool)
        return np.flatnonzero(left).tolist()

    def batches(self, todo: list[int]) -> Iterator[Batch]:
        return self._iter(todo) if todo else iter(())


def open_source(data: str | Path | Sequence[str | Path], preset: Preset, *, text_source: str,
                sampling_rate: int | None, batch_size: int, workers: int | None) -> Source:
    """Open a dataset folder or a signal cache as a stream of preprocessed batches.

    Reading and preprocessing run in the shared pipeline's worker processes (``etp_search.pipeline``,
    dataset folders) or a prefetch thread (caches), so they overlap with encoding in the main process.
    """
    path = Path(data) if isinstance(data, (str, Path)) else None
    if path is not None and path.is_file() and is_signal_cache(path):
        return _cache_source(path, preset, text_source, batch_size)
    if path is not None and path.is_file() and _looks_like_hdf5(path):
        raise DataError(f"{path} is an HDF5 file but not a complete signal cache (damaged or truncated?); "
                        f"rebuild it with `etp-search prepare DATA_DIR --out {path} --force`, or pass a dataset folder")
    reader = open_dataset(data, sampling_rate=sampling_rate, text_source=text_source)  # several folders: one id once
    refs = reader.refs()
    if workers is None:
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))

    transform = partial(_index_item, reader.format_name)

    def it(todo: list[int]) -> Iterator[Batch]:
        for chunk in read_records(reader, [refs[i] for i in todo], preset, transform, workers=workers,
                                  chunk=batch_size):
            yield _batch(chunk)

    missing = getattr(reader.summary, "missing_files", 0)
    line = f"{reader.format_name}: {len(refs)} records with signal files" + (f", {missing} rows without" if missing else "")
    return Source("dataset", reader.format_name, refs, line, it)


def _cache_source(path: Path, preset: Preset, text_source: str, batch_size: int) -> Source:
    cache = SignalCache.open(path)
    if cache.preset.to_dict() != preset.to_dict():
        from etp_search.errors import StoreMismatchError

        raise StoreMismatchError(
            f"signal cache {path} was prepared with preset {cache.preset.name!r} but the checkpoint needs "
            f"{preset.name!r}; run `etp-search prepare DATA_DIR --preset {preset.name}` or index the dataset folder")
    ids = cache.ids
    fmt = str(cache.attrs.get("format", "cache"))

    def it(todo: list[int]) -> Iterator[Batch]:
        rows_todo = np.asarray(todo, dtype=np.int64)
        texts = cache.texts(text_source if text_source in cache.text_sources else "default")
        labels = cache.labels()
        cols = {c: cache.meta(c) for c in cache.meta_columns}
        q: queue.Queue = queue.Queue(maxsize=2)

        def produce() -> None:  # prefetch the next batch while the encoder works
            try:
                for s in range(0, rows_todo.size, batch_size):
                    rows = rows_todo[s:s + batch_size]
                    metas = [_meta_row({c: _py(cols[c][r]) for c in cols}, fmt, {}) for r in rows]
                    q.put(Batch([ids[r] for r in rows], cache.signals(rows), [texts[r] for r in rows],
                                [labels[r] for r in rows], metas))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which ends the run
                q.put(exc)
                return
            q.put(None)

        t = threading.Thread(target=produce, daemon=True, name="etp-cache-reader")
        t.start()
        while (b := q.get()) is not None:
            if isinstance(b, BaseException):
                reason = (str(b).splitlines() or [""])[0][:120]
                raise DataError(f"reading signal cache {path} failed ({type(b).__name__}: {reason}); the batches "
                                "written so far are kept: rebuild the cache with `etp-search prepare DATA_DIR "
                                f"--out {path} --force` and run the same command again") from None
            yield b

    return Source("cache", fmt, ids, f"signal cache {path.name}: {len(ids)} records", it)


def _looks_like_hdf5(path: Path) -> bool:
    """The HDF5 signature at offset 0 (where h5py writes it), or a .h5/.hdf5 name."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head == b"\x89HDF\r\n\x1a\n" or path.suffix.lower() in (".h5", ".hdf5")


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, str) and v.startswith("["):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


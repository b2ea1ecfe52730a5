"""Reader stage: dataset folder or signal cache -> preprocessed batches, skipping ids already stored."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from etp_search.preprocess import Preset, preprocess
from etp_search.readers import open_dataset
from etp_search.readers.base import SkipRecord
from etp_search.signal_cache import SignalCache, is_signal_cache

logger = logging.getLogger(__name__)

#: Metadata columns written to the store (EcgRecord.meta conventions); "dataset" names the layout.
META_SCHEMA: dict[str, str] = {"patient_id": "int", "dataset": "str", "flags": "json"}


@dataclass
class Batch:
    """One batch of preprocessed records, ready for the encoder."""

    ids: list[str]
    signals: np.ndarray  # (n, 12, L) float32
    texts: list[str]
    labels: list[dict[str, float]]
    meta: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)


def _meta_row(meta: dict[str, Any], dataset: str, flags: dict[str, Any]) -> dict[str, Any]:
    def num(v: Any, fill: Any) -> Any:
        try:
            return fill if v is None or (isinstance(v, float) and math.isnan(v)) else v
        except TypeError:
            return fill

    kept_flags = {k: v for k, v in flags.items() if v not in (None, [], False)}
    if meta.get("missing_leads"):
        kept_flags["missing_leads"] = list(meta["missing_leads"])
    return {
        "age": float(num(meta.get("age"), float("nan"))),
        "sex": int(num(meta.get("sex"), -1)),
        "strat_fold": int(num(meta.get("strat_fold"), -1)),
        "source": str(meta.get("source", "")),
        "patient_id": int(num(meta.get("patient_id"), -1)),
        "dataset": dataset,
        "flags": kept_flags,
    }


class _RecordDataset(Dataset):
    """Map-style dataset over record refs; runs read + preprocess inside DataLoader workers."""

    def __init__(self, reader: Any, refs: Sequence[str], preset: Preset):
        self.reader, self.refs, self.preset = reader, list(refs), preset

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ref = self.refs[i]
        try:
            rec = self.reader.read(ref)
            x, flags = preprocess(rec.signal, rec.fs, self.preset, rec.leads)
        except SkipRecord as exc:
            return {"skip": exc.reason, "id": ref}
        return {
            "id": rec.id, "signal": x, "text": rec.text, "labels": dict(rec.labels),
            "meta": _meta_row(rec.meta, self.reader.format_name, flags),
        }


def _collate(items: list[dict[str, Any]]) -> Batch:
    ok = [it for it in items if "skip" not in it]
    skipped: dict[str, int] = {}
    for it in items:
        if "skip" in it:
            skipped[it["skip"]] = skipped.get(it["skip"], 0) + 1
    sig = np.stack([it["signal"] for it in ok]) if ok else np.empty((0, 12, 0), np.float32)
    return Batch([it["id"] for it in ok], sig, [it["text"] for it in ok], [it["labels"] for it in ok],
                 [it["meta"] for it in ok], skipped)


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

    def todo(self, done_ids: set[str]) -> list[int]:
        """Positions of the records not yet in ``done_ids`` (what a resumed run still has to do)."""
        return [i for i, rid in enumerate(self.ids) if rid not in done_ids]

    def batches(self, todo: list[int]) -> Iterator[Batch]:
        return self._iter(todo) if todo else iter(())


def open_source(data: str | Path | Sequence[str | Path], preset: Preset, *, text_source: str,
                sampling_rate: int | None, batch_size: int, workers: int | None) -> Source:
    """Open a dataset folder or a signal cache as a stream of preprocessed batches.

    Reading and preprocessing run in DataLoader worker processes (dataset folders) or a prefetch
    thread (caches), so they overlap with encoding in the main process.
    """
    path = Path(data) if isinstance(data, (str, Path)) else None
    if path is not None and path.is_file() and is_signal_cache(path):
        return _cache_source(path, preset, text_source, batch_size)
    reader = open_dataset(data, sampling_rate=sampling_rate, text_source=text_source)  # several folders: one id once
    refs = reader.refs()
    if workers is None:
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))

    def it(todo: list[int]) -> Iterator[Batch]:
        ds = _RecordDataset(reader, [refs[i] for i in todo], preset)
        yield from DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
                              prefetch_factor=2 if workers else None, persistent_workers=False)

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
            for s in range(0, rows_todo.size, batch_size):
                rows = rows_todo[s:s + batch_size]
                metas = [_meta_row({c: _py(cols[c][r]) for c in cols}, fmt, {}) for r in rows]
                q.put(Batch([ids[r] for r in rows], cache.signals(rows), [texts[r] for r in rows],
                            [labels[r] for r in rows], metas))
            q.put(None)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        while (b := q.get()) is not None:
            yield b

    return Source("cache", fmt, ids, f"signal cache {path.name}: {len(ids)} records", it)


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


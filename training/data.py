"""Training pairs from a signal cache: fold splits, text ids, and seeded (Distributed) batch order."""

from __future__ import annotations

import hashlib
import re
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from etp_search.errors import DataError
from etp_search.signal_cache import SignalCache

log = logging.getLogger(__name__)

#: Records kept in memory when the split is at most this many bytes; larger splits read per batch.
PRELOAD_BYTES = 2 << 30


def split_indices(
    cache: SignalCache, train_folds: Sequence[int], val_folds: Sequence[int], val_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation records.

    With strat_fold metadata (PTB-XL) the folds decide; without it (other layouts) a stable hash of
    the record id puts ``val_fraction`` of the records into validation. Records of other folds (PTB-XL
    fold 10, the test fold) are in neither: training never sees them.
    """
    check_folds(train_folds, val_folds)
    folds = cache.meta("strat_fold") if "strat_fold" in cache.meta_columns else np.full(len(cache), -1)
    folds = np.asarray(folds, dtype=np.int64)
    if (folds > 0).any():
        train = np.flatnonzero(np.isin(folds, list(train_folds)))
        val = np.flatnonzero(np.isin(folds, list(val_folds)))
        present = sorted(int(f) for f in np.unique(folds[folds > 0]))
        for rows, flag, asked in ((train, "--train-folds", train_folds), (val, "--val-folds", val_folds)):
            if len(rows) == 0:
                what = "training" if flag == "--train-folds" else "validation"
                raise DataError(
                    f"{cache.path} has no {what} records in {flag} {format_folds(asked)}; "
                    f"this data has folds {format_folds(present)}; pass e.g. {suggest_folds(present)}"
                )
    else:
        h = np.array([int(hashlib.sha1(i.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for i in cache.ids])
        val = np.flatnonzero(h < val_fraction)
        train = np.flatnonzero(h >= val_fraction)
        log.info("no strat_fold in %s: %d train / %d validation records by id hash", cache.path, len(train), len(val))
        if len(train) == 0 or len(val) == 0:
            raise DataError(
                f"{cache.path} has no strat_fold and its {len(cache)} records are too few for a "
                f"{val_fraction:.0%} validation split by id; add records or a strat_fold column"
            )
    return train, val


def check_folds(train_folds: Sequence[int], val_folds: Sequence[int]) -> None:
    """Both fold lists non-empty and disjoint (validation must be unseen by training)."""
    if not list(train_folds):
        raise DataError("--train-folds is empty; pass the strat_fold values that train, e.g. --train-folds 1,2,3,4,5,6,7,8")
    if not list(val_folds):
        raise DataError("--val-folds is empty; pass the strat_fold values that validate and pick best/, e.g. --val-folds 9")
    shared = sorted(set(train_folds) & set(val_folds))
    if shared:
        raise DataError(
            f"--train-folds and --val-folds share fold {format_folds(shared)}; validation must use records "
            "training never sees — pass disjoint folds, e.g. --train-folds 1,2,3,4,5,6,7,8 --val-folds 9"
        )


def format_folds(folds: Sequence[int]) -> str:
    """Folds as "1-8", "9, 10" or "1-3, 7"."""
    vals = sorted(set(int(f) for f in folds))
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(f"{vals[i]}-{vals[j]}" if j - i >= 2 else ", ".join(str(v) for v in vals[i : j + 1]))
        i = j + 1
    return ", ".join(parts)


def suggest_folds(present: Sequence[int]) -> str:
    """A working --train-folds/--val-folds pair for these folds (PTB-XL habit: validate on 9, keep 10 out)."""
    present = sorted(set(present))
    if len(present) < 2:
        return "more data: one fold cannot both train and validate"
    val = 9 if 9 in present else present[-1]
    train = [f for f in present if f not in (val, 10)] or [f for f in present if f != val]
    return f"--train-folds {','.join(map(str, train))} --val-folds {val}"


class _Sized(torch.utils.data.Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@dataclass
class PairSplit:
    """One split's signals (in memory or read on demand) and the text row of each record."""

    cache: SignalCache
    rows: np.ndarray  # cache row of each record of the split
    texts: list[str]  # report text of each record
    signals: np.ndarray | None = None  # (n, 12, L) when preloaded

    @classmethod
    def load(cls, cache: SignalCache, rows: np.ndarray, texts: Sequence[str]) -> "PairSplit":
        rows = np.asarray(rows, dtype=np.int64)
        _, c, length = cache.shape
        sig = cache.signals(rows) if len(rows) * c * length * 4 <= PRELOAD_BYTES else None
        return cls(cache=cache, rows=rows, texts=[texts[r] for r in rows], signals=sig)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        """(b, 12, L) float32 for split positions ``idx``."""
        pos = np.asarray(idx, dtype=np.int64)
        if self.signals is not None:
            return torch.from_numpy(self.signals[pos])
        return torch.from_numpy(self.cache.signals(self.rows[pos]))


class EpochBatches:
    """Global-batch order per epoch from a DistributedSampler (also with one process).

    ``batch_size`` is the GLOBAL batch; each of ``world_size`` ranks takes batch_size // world_size.
    The order depends only on (seed, epoch), so a resumed run skips the batches it already did.
    """

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        if batch_size % world_size:
            raise DataError(f"--batch-size {batch_size} must be a multiple of the {world_size} processes")
        self.local_batch = batch_size // world_size
        self.sampler: DistributedSampler[int] = DistributedSampler(_Sized(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if len(self.sampler) < self.local_batch:
            raise DataError(f"{n} training records are fewer than one batch of {batch_size}; lower --batch-size to at most {n - n % world_size}")

    def __len__(self) -> int:
        return len(self.sampler) // self.local_batch  # drop the last partial batch: CLIP wants full batches

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[list[int]]:
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        for b in range(skip, len(self)):
            yield order[b * self.local_batch : (b + 1) * self.local_batch]


def resolve_cache_path(data: str | Path) -> Path | None:
    """``data`` itself when it is a signal cache file, else None (a dataset folder)."""
    p = Path(data)
    return p if p.is_file() else None


def split_statements(text: str) -> list[str]:
    """A free-text report's statements: its pieces between commas / semicolons / full stops."""
    parts = [p.strip() for p in re.split(r"[,;.]\s+|[,;.]$", text) if p and p.strip()]
    return list(dict.fromkeys(parts)) or ([text.strip()] if text.strip() else [])


@dataclass
class StatementTable:
    """The statements of each training record: texts for statement sampling, sets for soft targets.

    Attributes:
        vocab: Distinct statement texts.
        ids: Per record, the vocab ids of its statements (the report's pieces, plus the hierarchy
            names when asked for).
        report_sets: (n, V) multi-hot of each record's statements (its report's statement set).
    """

    vocab: list[str]
    ids: list[list[int]]
    report_sets: torch.Tensor

    @classmethod
    def build(cls, texts: Sequence[str], labels: Sequence[dict] | None, text_source: str,
              hierarchy: bool = False) -> "StatementTable":
        from etp_search.labels import record_statements

        vocab: dict[str, int] = {}
        ids: list[list[int]] = []
        for i, text in enumerate(texts):
            if text_source == "scp_en" and labels is not None:
                pieces = record_statements(labels[i], hierarchy=hierarchy)
            else:
                pieces = split_statements(text)
            if not pieces:
                pieces = [text]  # an empty report stays its own (empty) statement
            ids.append([vocab.setdefault(p, len(vocab)) for p in pieces])
        sets = torch.zeros(len(texts), max(1, len(vocab)), dtype=torch.bool)
        for i, row in enumerate(ids):
            sets[i, row] = True
        return cls(vocab=list(vocab), ids=ids, report_sets=sets)


def subsample_rows(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The first ``fraction`` of a seeded permutation of ``rows`` (sorted): 25 % of the rows lie inside 50 %."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"--train-fraction must be in (0, 1]; got {fraction}")
    if fraction == 1.0:
        return rows
    perm = np.random.default_rng([seed, 1729]).permutation(len(rows))
    keep = max(1, int(round(fraction * len(rows))))
    return np.sort(np.asarray(rows)[perm[:keep]])

"""One append's inputs, checked against the store's schema and encoded as a part file's columns.

``EmbeddingStore.append`` takes ids, vectors, report texts, labels and metadata in the forms callers
have (lists, JSON strings or dicts, metadata per column or per record). ``batch_columns`` checks them
against the store's schema (``dim``, ``has_text``, ``unit_norm``, ``meta_schema``) and returns the
arrays ``indexing.columns._write_part`` writes. Nothing here reads a file: the store checks what only
it knows (which ids are stored already) before calling ``batch_columns``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from indexing.columns import _encode_meta
from indexing.errors import StoreError

__all__ = ["NORM_TOL", "batch_columns", "check_unique_ids", "check_vectors", "norm_misses"]

#: |norm - 1| above this on a unit-norm store means damaged bytes (float32 normalisation errs ~1e-7).
NORM_TOL = 1e-3


def check_unique_ids(ids: list[str]) -> None:
    """StoreError naming up to three ids that repeat within one batch."""
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise StoreError(f"record ids repeat within the batch ({', '.join(dup)}); record ids must be unique")


def batch_columns(ids: list[str], ecg: Any, text: Any, texts: Any, labels: Any, meta: Any, *, dim: int,
                  has_text: bool, unit_norm: bool, meta_schema: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The columns of one part file (``ids``, ``ecg``, ``text``, ``texts``, ``labels``, ``meta/<col>``)
    for a batch of ``len(ids)`` records; StoreError names the first input that does not fit."""
    n = len(ids)
    cols: dict[str, np.ndarray] = {"ids": np.array(ids, dtype=object)}
    cols["ecg"] = check_vectors("ecg", ecg, n, dim, unit_norm)
    if has_text:
        if text is None:
            raise StoreError("this store holds report vectors: pass text= with the batch")
        cols["text"] = check_vectors("text", text, n, dim, unit_norm)
    elif text is not None:
        raise StoreError("this store was created without report vectors (has_text=False); drop text=")
    cols["texts"] = np.array(["" if t is None else str(t) for t in (texts or [""] * n)], dtype=object)
    if labels is None:
        labels = ["{}"] * n
    cols["labels"] = np.array([lab if isinstance(lab, str)
                               else json.dumps({str(k): float(v) for k, v in lab.items()}, sort_keys=True)
                               for lab in labels], dtype=object)
    for name in ("texts", "labels"):
        if len(cols[name]) != n:
            raise StoreError(f"{name} has {len(cols[name])} entries for {n} ids")
    by_col: dict[str, Sequence[Any]] = {}
    if meta is None:
        pass
    elif isinstance(meta, Mapping):
        unknown = set(meta) - set(meta_schema)
        if unknown:
            raise StoreError(f"unknown metadata column(s) {', '.join(sorted(unknown))}; the store has: "
                             f"{', '.join(meta_schema)} (add columns with meta_schema at create)")
        by_col = dict(meta)
    else:
        if len(meta) != n:
            raise StoreError(f"meta has {len(meta)} records for {n} ids")
        by_col = {c: [m.get(c) for m in meta] for c in meta_schema}
    for col, kind in meta_schema.items():
        values = by_col.get(col)
        if values is None:
            values = [None] * n
        if len(values) != n:
            raise StoreError(f"metadata column {col!r} has {len(values)} values for {n} ids")
        try:
            cols[f"meta/{col}"] = _encode_meta(kind, values, n)
        except (TypeError, ValueError) as e:
            raise StoreError(f"metadata column {col!r} ({kind}) got a bad value: {e}") from e
    return cols


def check_vectors(name: str, x: Any, n: int, dim: int, unit_norm: bool) -> np.ndarray:
    """``x`` as a contiguous (n, dim) float32 array: finite, and L2-normalised when ``unit_norm``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape != (n, dim):
        raise StoreError(f"{name} vectors have shape {x.shape}; this store expects ({n}, {dim})")
    if not np.isfinite(x).all():
        raise StoreError(f"{name} vectors contain NaN/inf (bad input record?); drop those records")
    if unit_norm and n:
        norms, bad = norm_misses(x)
        if bad.size:
            raise StoreError(f"{name} vectors must be L2-normalised for this store (norms "
                             f"{norms.min():.4g}..{norms.max():.4g}); normalise them before appending")
    return x


def norm_misses(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the L2 norm of each row, the rows whose norm is not within ``NORM_TOL`` of 1, nan included):
    what "unit-norm" means for appends and for reads of a unit-norm store."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return norms, np.flatnonzero(~(np.abs(norms - 1.0) < NORM_TOL))

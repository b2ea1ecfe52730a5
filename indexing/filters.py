"""``--where`` filters over store rows: parse ``COLUMN OP VALUE`` and turn them into a row mask.

The mask goes to ``faiss_index.search(allowed_rows=...)``, which applies it inside FAISS.

    strat_fold=10        age>=60           sex!=1          source~records100
    label=AFIB           label in AFIB,AFLT                strat_fold not in 9,10
    id in 00001_lr,00002_lr                text~fibrillation

Columns: ``id``, ``label`` (a key of the record's labels, case-insensitive), ``text`` (the report)
and every metadata column of the store. Rows with an unknown value (nan age, -1 sex) never match
a comparison, as in SQL. Several filters are combined with AND.
"""

from __future__ import annotations

import json
import logging
import math
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexing.columns import _damaged
from indexing.errors import FilterError

logger = logging.getLogger(__name__)

OPS = ("<=", ">=", "!=", "==", "=", "<", ">", "~")
_SYNTAX = ("use COLUMN OP VALUE with OP one of = != < <= > >= ~ (contains), or COLUMN in A,B / not in A,B; "
           "e.g. strat_fold=10, age>=60, label in AFIB,AFLT")
_IN_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s+(not\s+in|in)\s+(.+?)\s*$", re.IGNORECASE)
_OP_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>|~)\s*(.*?)\s*$")
_SPECIAL = ("id", "label", "text")


@dataclass(frozen=True)
class Where:
    """One parsed condition. ``op`` is one of OPS, "in" or "not in"; ``values`` are raw strings."""

    column: str
    op: str
    values: tuple[str, ...]
    expr: str = ""


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


def parse_where(expr: str) -> Where:
    """Parse one ``--where`` expression; FilterError explains the syntax when it does not parse."""
    m = _IN_RE.match(expr)
    if m:
        col, op, rest = m.group(1), " ".join(m.group(2).lower().split()), m.group(3).strip()
        if rest[:1] in "[(" and rest[-1:] in "])":
            rest = rest[1:-1]
        values = tuple(_unquote(v) for v in rest.split(",") if v.strip())
        if not values:
            raise FilterError(f"--where {expr!r} lists no values; {_SYNTAX}")
        return Where(_label_alias(col), op, values, expr)
    m = _OP_RE.match(expr)
    if not m or m.group(3) == "" or m.group(3)[0] in "<>=!~":
        raise FilterError(f"cannot parse --where {expr!r}; {_SYNTAX}")
    col, op, value = m.group(1), m.group(2), _unquote(m.group(3))
    if op == "==":
        op = "="
    return Where(_label_alias(col), op, (value,), expr)


def _label_alias(col: str) -> str:
    """``label``, ``labels`` (any case) name the label column; other names pass through."""
    return "label" if col.lower() in ("label", "labels") else col


# Columns read for filtering are cached per store object (queries filter again and again); the
# cache is dropped when the store's row count changes.
_CACHE: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _column(store: Any, name: str) -> Any:
    cache = _CACHE.get(store)
    if cache is None or cache.get("__n__") != len(store):
        cache = {"__n__": len(store)}
        _CACHE[store] = cache
    if name not in cache:
        if name == "label":
            cache[name] = _label_index(store)
        elif name == "text":
            cache[name] = _distinct(_chunks(store, store.texts_bytes))
        elif store.meta_schema.get(name) == "str":
            cache[name] = _distinct([np.asarray(store.meta(name))])
        else:
            cache[name] = store.meta(name)
    return cache[name]


def columns(store: Any) -> list[str]:
    """Names a ``--where`` can use on this store."""
    return list(_SPECIAL) + [c for c in store.meta_columns if store.meta_schema.get(c) != "json"]


def filter_rows(store: Any, wheres: str | Where | Iterable[str | Where]) -> np.ndarray:
    """Boolean mask over the store's rows where every condition holds (AND)."""
    if isinstance(wheres, (str, Where)):
        wheres = [wheres]
    if len(store) == 0 and hasattr(store, "check_not_empty"):
        store.check_not_empty()  # one clear message rather than an empty result
    mask = np.ones(len(store), dtype=bool)
    for w in wheres:
        w = parse_where(w) if isinstance(w, str) else w
        mask &= _match(store, w)
    logger.debug("filters %s keep %d of %d rows", wheres, int(mask.sum()), len(store))
    return mask


def _match(store: Any, w: Where) -> np.ndarray:
    known = columns(store)
    if w.column not in known:
        raise FilterError(f"unknown column {w.column!r} in --where {w.expr or w.column!r}; "
                          f"columns: {', '.join(known)}")
    if w.column == "label":
        return _match_labels(_column(store, "label"), w)
    if w.column == "id":
        return _match_ids(store, w)
    kind = "str" if w.column == "text" else store.meta_schema[w.column]
    col = _column(store, w.column)
    if kind == "str":  # decided once per distinct value (reports and sites repeat), then mapped to rows
        inverse, distinct = col
        return _match_values(distinct, kind, w)[inverse]
    return _match_values(col, kind, w)


#: Rows read (and de-duplicated with ``np.unique``) per call when a string column is cached.
_CHUNK = 1 << 16


def _chunks(store: Any, read: Any) -> Iterable[np.ndarray]:
    """``read(rows)`` over all of the store's rows, ``_CHUNK`` rows a call."""
    return (read(slice(a, min(len(store), a + _CHUNK))) for a in range(0, len(store), _CHUNK))


def _distinct(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A string column as (row -> distinct index, the distinct values as an object array of str),
    de-duplicated chunk by chunk in numpy (``S`` bytes or ``U`` arrays)."""
    parts: list[np.ndarray] = []
    seen: dict[bytes | str, int] = {}
    for chunk in chunks:
        if not len(chunk):
            continue
        uniq, inv = np.unique(chunk, return_inverse=True)
        codes = np.array([seen.setdefault(u, len(seen)) for u in uniq.tolist()], dtype=np.int32)
        parts.append(codes[inv.ravel()])
    inverse = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    distinct = np.array([u.decode("utf-8") if isinstance(u, bytes) else str(u) for u in seen] or [""], dtype=object)
    return inverse, distinct


def _match_values(col: Any, kind: str, w: Where) -> np.ndarray:
    if w.op == "~":
        if kind != "str":
            raise FilterError(f"--where {w.expr!r}: '~' (contains) works on text columns; "
                              f"{w.column} holds numbers, use = < > instead")
        needle = w.values[0].lower()
        return np.array([needle in str(v).lower() for v in col], dtype=bool)
    values = [_convert(v, kind, w) for v in w.values]
    if kind in ("float", "int"):
        arr = np.asarray(col, dtype=np.float64 if kind == "float" else np.int64)
        known_mask = ~np.isnan(arr) if kind == "float" else np.ones(len(arr), bool)
        # int columns encode "unknown" as -1; it matches only when asked for explicitly
        if kind == "int" and -1 not in values:
            known_mask = arr != -1
    else:
        arr = np.asarray(col, dtype=object)
        known_mask = np.ones(len(arr), bool)
    if w.op in ("in", "not in"):
        hit = np.isin(arr, np.array(values, dtype=arr.dtype))
        return known_mask & (hit if w.op == "in" else ~hit)
    return known_mask & np.asarray(_CMP[w.op](arr, values[0]), dtype=bool)


_CMP = {"=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
        ">=": np.greater_equal}


def _match_ids(store: Any, w: Where) -> np.ndarray:
    """``id`` conditions through the store's id map (``indexing.idmap``), never a Python str per row:
    = / in / != / not in look the named ids up (O(ids asked)); < <= > >= and ~ run numpy over the
    map's UTF-8 keys (byte order is code-point order, so comparisons match Python's)."""
    n = len(store)
    if w.op in ("=", "in", "!=", "not in"):
        rows = store.find_rows(w.values)
        hit = np.zeros(n, dtype=bool)
        hit[rows[rows >= 0]] = True
        return hit if w.op in ("=", "in") else ~hit
    keys = store.id_keys()
    if w.op == "~":
        needle = w.values[0].lower().encode("utf-8")
        if keys.size and (keys.view(np.uint8) >= 0x80).any():  # non-ASCII ids: str.lower per id
            return np.array([needle.decode("utf-8") in k.decode("utf-8").lower() for k in keys.tolist()], dtype=bool)
        return np.strings.find(np.strings.lower(keys), needle) >= 0
    return np.asarray(_CMP[w.op](keys, w.values[0].encode("utf-8")), dtype=bool)


def _convert(value: str, kind: str, w: Where) -> Any:
    try:
        if kind == "float":
            out = float(value)
            if math.isnan(out):
                raise ValueError
            return out
        if kind == "int":
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
    except ValueError:
        raise FilterError(f"--where {w.expr!r}: column {w.column} holds {kind} values, {value!r} is not one") from None
    return value


def _label_index(store: Any) -> tuple[np.ndarray, list[frozenset[str]]]:
    """Each row's label set as (row -> distinct index, lower-cased keys of each distinct JSON).

    Stores repeat a few thousand label combinations over millions of rows: the rows are read in
    chunks as UTF-8 bytes and de-duplicated in numpy (``_distinct``), and only the distinct JSON
    strings are parsed, so a label filter costs O(distinct) in Python and one ``np.isin`` over the rows."""
    try:  # a stored label that is not UTF-8 JSON: the store is damaged
        inverse, distinct = _distinct(_chunks(store, store.labels_bytes))
        return inverse, [frozenset(k.lower() for k in json.loads(raw)) if raw else frozenset() for raw in distinct]
    except ValueError as e:
        raise _damaged(store.path, "labels", e) from e


def _match_labels(index: tuple[np.ndarray, list[frozenset[str]]], w: Where) -> np.ndarray:
    if w.op not in ("=", "!=", "in", "not in"):
        raise FilterError(f"--where {w.expr!r}: label supports = != in / not in (e.g. label=AFIB), not {w.op!r}")
    inverse, keys = index
    wanted = {v.lower() for v in w.values}
    hits = np.array([j for j, k in enumerate(keys) if k & wanted], dtype=np.int32)
    out = np.isin(inverse, hits)
    return out if w.op in ("=", "in") else ~out

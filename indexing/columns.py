"""The store's file format: header attributes, column encodings, and the rows of one file.

Every store file (main or part) holds the same datasets, one row per record: ``ids``, ``ecg``,
``text`` (report vectors, when the store has them), ``texts`` (report strings), ``labels`` (JSON)
and ``meta/<column>``. Metadata kinds: float (nan = unknown), int (-1), str (""), json. Numeric
datasets carry HDF5's fletcher32 checksum, so flipped bytes fail the read instead of being used.
Anything h5py raises on a damaged file becomes one StoreError line naming the fix.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from indexing._io import check_file_path, crash_point
from indexing.errors import StoreError

FORMAT_NAME = "etp-embedding-store"
FORMAT_VERSION = 1
#: Metadata columns every store has (EcgRecord.meta conventions: nan / -1 / "" mean unknown).
DEFAULT_META_SCHEMA: dict[str, str] = {"age": "float", "sex": "int", "strat_fold": "int", "source": "str"}
META_TYPES = ("float", "int", "str", "json")
_MISSING = {"float": float("nan"), "int": -1, "str": "", "json": None}
_STR = h5py.string_dtype("utf-8")
REBUILD_HINT = "rebuild it with `etp-search index DATA_DIR --rebuild` (or point --store elsewhere)"
RESERVED = ("id", "label", "labels", "text", "texts", "ecg", "ids")


class Vanished(StoreError):
    """A file the reader listed was replaced or deleted by the writer before it was opened.

    Transient when another process is writing: the reader re-scans and tries again.
    """


#: Rows per chunk of a string column (ids, texts, labels, str/json metadata): a query reads the
#: strings of its k hits, and a chunk of vlen strings is read whole (16 bytes a row + the heap).
STR_CHUNK_ROWS = 4096
#: Rows per chunk of a numeric 1-D metadata column.
NUM_CHUNK_ROWS = 65536


def _chunk_rows(dim: int) -> int:
    return max(1, (1 << 20) // max(1, dim * 4))  # ~1 MiB chunks: contiguous reads, cheap appends


def _column_args(n: int, width: tuple[int, ...], dtype: Any, dim: int) -> dict[str, Any]:
    """How every file (a part, a merge, a compacted main file) stores a column of ``n`` rows:
    resizable; vectors in ~1 MiB chunks, strings in ``STR_CHUNK_ROWS`` (a query reads the strings
    of its k hits; 65,536-row string chunks read 1 MiB of heap pointers per random id at 5M rows),
    numbers in ``NUM_CHUNK_ROWS``; numeric columns carry fletcher32, so a flipped byte in a chunk
    fails the read instead of being used."""
    is_str = dtype == object or h5py.check_string_dtype(dtype) is not None
    rows = _chunk_rows(dim) if width else STR_CHUNK_ROWS if is_str else NUM_CHUNK_ROWS
    return {"dtype": _STR if is_str else dtype, "maxshape": (None,) + width,
            "chunks": (max(1, min(rows, n)),) + width, "fletcher32": not is_str}


def _encode_meta(kind: str, values: Sequence[Any], n: int) -> np.ndarray:
    if kind == "float":
        return np.array([_MISSING["float"] if v is None else float(v) for v in values], dtype="f8")
    if kind == "int":
        out = []
        for v in values:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(-1)
            else:
                out.append(int(v))
        return np.array(out, dtype="i8")
    if kind == "str":
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    return np.array([json.dumps(v) for v in values], dtype=object)  # json


def _decode_str(arr: np.ndarray) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in arr.tolist()]


#: What h5py / HDF5 raise on damaged files: failed chunk reads or checksums (OSError), broken
#: strings (UnicodeDecodeError is a ValueError), missing datasets (KeyError), odd shapes (TypeError).
DAMAGE = (OSError, ValueError, KeyError, TypeError, RuntimeError)


def _damaged(path: Path, what: str, err: BaseException) -> StoreError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:80]
    return StoreError(f"store {path} is damaged ({what}: {reason}); {REBUILD_HINT}")


def _write_rows(f: h5py.File, cols: Mapping[str, np.ndarray], dim: int) -> None:
    """Write a batch's columns as chunked, resizable datasets (``_column_args``)."""
    for name, arr in cols.items():
        f.create_dataset(name, data=arr, **_column_args(len(arr), arr.shape[1:], arr.dtype, dim))
        crash_point("mid-write")


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if isinstance(e, FileNotFoundError) or not path.exists():
            raise Vanished(f"cannot read {path}: the file is gone") from e
        check_file_path(path, "store", "store.h5", StoreError)
        raise StoreError(f"cannot read {path} ({str(e).splitlines()[0][:80]}): it is not a complete HDF5 file; "
                         f"if it is a damaged store, {REBUILD_HINT}") from e


def _write_header(f: h5py.File, header: Mapping[str, Any]) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["dim"] = int(header["dim"])
    f.attrs["has_text"] = bool(header["has_text"])
    f.attrs["unit_norm"] = bool(header.get("unit_norm", False))
    f.attrs["store_uuid"] = header["store_uuid"]
    f.attrs["meta_schema"] = json.dumps(header["meta_schema"])
    f.attrs["merged_upto"] = int(header["merged_upto"])
    f.attrs["n_rows"] = int(header.get("n_rows", 0))
    prov = header["provenance"]
    f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
    for key, value in prov.items():  # also one attribute each, readable with h5dump / HDFView
        f.attrs[f"provenance.{key}"] = value if isinstance(value, (str, int, float)) else json.dumps(value)


def _write_main(f: h5py.File, header: Mapping[str, Any], cols: Mapping[str, np.ndarray], dim: int) -> None:
    _write_header(f, header)
    _write_rows(f, cols, dim)


def _write_part(f: h5py.File, store_uuid: str, lo: int, hi: int, level: int,
                cols: Mapping[str, np.ndarray], dim: int) -> None:
    f.attrs.update({"store_uuid": store_uuid, "lo": lo, "hi": hi, "level": level})
    _write_rows(f, cols, dim)


def _read_header(path: Path) -> dict[str, Any]:
    with _open_h5(path) as f:
        try:
            return _header_of(f, path)
        except StoreError:
            raise
        except DAMAGE as e:
            raise _damaged(path, "header", e) from e


def _header_of(f: h5py.File, path: Path) -> dict[str, Any]:
    a = f.attrs
    if a.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not an etp-search embedding store (another HDF5 file?); point --store at a "
                         "store file, or at a new path to create one")
    version = int(a.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise StoreError(f"store {path} has format version {version}, this etp-search reads {FORMAT_VERSION}; "
                         f"{REBUILD_HINT}")
    try:
        return {"dim": int(a["dim"]), "has_text": bool(a["has_text"]), "unit_norm": bool(a.get("unit_norm", False)),
                "store_uuid": str(a["store_uuid"]),
                "meta_schema": json.loads(a["meta_schema"]), "provenance": json.loads(a["provenance"]),
                "merged_upto": int(a["merged_upto"]), "n_rows": int(f["ids"].shape[0])}
    except DAMAGE as e:
        raise StoreError(f"store {path} has a damaged header ({str(e).splitlines()[0][:80] if str(e) else e!r}); "
                         f"{REBUILD_HINT}") from e


# ----------------------------------------------------------------------------- provenance comparison


def _canon(value: Any) -> Any:
    """Comparable form: JSON strings decoded, dict key order ignored, ints/floats unified."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, (dict, list)):
                value = decoded
    value = json.loads(json.dumps(value, sort_keys=True, default=str))
    return _num(value)


def _num(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 100 and 100.0 are the same sampling rate
    if isinstance(value, dict):
        return {k: _num(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_num(v) for v in value]
    return value


def _short(value: Any) -> str:
    if value is None:
        return "missing"
    s = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return s if len(s) <= 16 else s[:12] + "…"

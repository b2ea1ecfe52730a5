"""What ``etp-search info FILE.h5`` says about an embedding store or a signal cache (no model loaded).

- ``describe_store``: rows, dimension, the checkpoint and preset that wrote it, record metadata
  (folds, datasets), reports (non-empty, distinct), the most frequent label codes (records per code), and each FAISS
  index file as its sidecar describes it (factory, rows covered, recall@10) with its state: current,
  behind the store (the rows since are searched exactly), or unusable (named, with the fix).
  The index file's SHA-256 is checked when a query loads it, not here.
- ``describe_cache``: records, preset and rate, signal shape, skips by reason, text sources.
- ``describe_file``: whichever of the two ``path`` is, or one line saying what it is not.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from etp_search.errors import DataError

#: Reports and labels are counted over at most this many rows (the first ones) of a big store.
COUNT_ROWS = 1_000_000


def describe_file(path: str | Path) -> dict[str, Any]:
    """``describe_store`` or ``describe_cache`` by the file's own format marker."""
    from etp_search.signal_cache import is_signal_cache
    from indexing.columns import FORMAT_NAME

    p = Path(path)
    if is_signal_cache(p):
        return describe_cache(p)
    import h5py

    try:
        with h5py.File(p, "r") as f:
            fmt = f.attrs.get("format")
    except OSError as e:
        raise DataError(f"{p} is not an HDF5 file ({e}); pass a dataset folder, a store or a signal cache") from None
    if fmt == FORMAT_NAME:
        return describe_store(p)
    raise DataError(f"{p} is neither an embedding store nor a finished signal cache; pass a dataset folder, "
                    "a store from `index` or a cache from `prepare`")


def describe_store(path: str | Path) -> dict[str, Any]:
    from indexing.store import EmbeddingStore

    with EmbeddingStore.open(path) as s:
        n = len(s)
        prov = s.provenance
        rows = np.arange(min(n, COUNT_ROWS))
        out: dict[str, Any] = {
            "kind": "embedding store", "path": str(s.path), "rows": n, "dim": s.dim, "report_vectors": s.has_text,
            "checkpoint": {"path": prov.get("checkpoint_path"), "sha256": prov.get("checkpoint_sha256")},
            "preset": (prov.get("preset") or {}).get("name"), "sampling_rate": prov.get("sampling_rate"),
            "text_source": prov.get("text_source"), "dataset_format": prov.get("dataset_format"),
            "data_dir": prov.get("data_dir"), "created": prov.get("created"), "columns": list(s.meta_columns),
        }
        if "strat_fold" in s.meta_columns:
            folds: Counter[int] = Counter(np.asarray(s.meta("strat_fold", rows)).tolist())
            out["folds"] = {str(k): v for k, v in sorted(folds.items())}
        if "dataset" in s.meta_columns:
            out["datasets"] = dict(Counter(str(x) for x in np.asarray(s.meta("dataset", rows)).tolist()).most_common(8))
        texts = s.texts(rows) if n else []
        out["reports"] = {"counted_rows": len(rows), "non_empty": sum(1 for t in texts if t.strip()),
                          "distinct": len({t for t in texts if t.strip()})}
        codes: Counter[str] = Counter()
        for lab in s.labels(rows) if n else []:
            codes.update(lab.keys())  # records per code (the values are likelihoods)
        out["top_labels"] = dict(codes.most_common(10))
        out["indexes"] = {w: _index_state(s, w) for w in (("ecg", "text") if s.has_text else ("ecg",))}
    return out


def _index_state(store: Any, which: str) -> dict[str, Any]:
    from indexing.index_files import SIDECAR_VERSION, default_index_path, sidecar_path

    path = default_index_path(store.path, which)
    side = sidecar_path(path)
    if not path.exists() or not side.exists():
        return {"state": "missing: queries search exactly; `etp-search index DATA_DIR --rebuild-index` builds it"}
    try:
        info = json.loads(side.read_text())
        covered, size = int(info["n_rows"]), int(info["file_bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {"state": f"unusable: sidecar {side.name} is unreadable; rebuild it with --rebuild-index"}
    facts = {k: info.get(k) for k in ("factory", "factory_requested", "nlist", "nprobe", "recall_at_10", "saved")}
    facts["rows_covered"] = covered
    if int(info.get("sidecar_version", 0)) < SIDECAR_VERSION or info.get("store_uuid") != store.uuid \
            or info.get("which") != which or path.stat().st_size != size or covered > len(store):
        why = ("of another store" if info.get("store_uuid") != store.uuid else
               "its size differs from the sidecar's" if path.stat().st_size != size else "out of date")
        facts["state"] = f"unusable ({why}): queries search exactly; rebuild it with --rebuild-index"
    elif covered < len(store):
        facts["state"] = f"behind: {len(store) - covered} newer rows are searched exactly until the next `index`"
    else:
        facts["state"] = "current"
    return facts


def describe_cache(path: str | Path) -> dict[str, Any]:
    from etp_search.signal_cache import SignalCache

    c = SignalCache.open(path)
    try:
        a = c.attrs
        return {"kind": "signal cache", "path": str(c.path), "records": len(c), "format": a.get("format"),
                "preset": c.preset.name, "sampling_rate": c.fs, "signal_shape": list(c.shape[1:]),
                "skipped": a.get("skipped", {}), "text_sources": list(c.text_sources),
                "default_text_source": a.get("text_source"), "data_dir": a.get("data_dir"), "created": a.get("created")}
    finally:
        c.close()

"""What ``etp-search info FILE.h5`` says about an embedding store or a signal cache (no model loaded).

- ``describe_store``: rows, dimension, the checkpoint and preset that wrote it, record metadata
  (folds, datasets), reports (non-empty, distinct), the most frequent label codes (records per code), and each FAISS
  index file as its sidecar describes it (factory, rows covered, recall@10) with its state: current,
  behind the store (the rows since are searched exactly), or unusable (named, with the fix).
  The index file's SHA-256 is checked when a query loads it, not here.
- ``describe_cache``: records, preset and rate, signal shape, skips by reason, text sources.
- ``describe_file``: whichever of the two ``path`` is, or one line saying what it is not.
- ``describe_folder``: a dataset folder, without preparing it (``etp-search info DATA_DIR``).
- ``verify_store``: read every row of every column (numeric chunks carry fletcher32, vectors must
  have norm 1) and hash every index file afresh (``info STORE.h5 --verify``); damage is one line
  naming the file, as a query that met it would say.

Record counts of a folder (found, listed without files) come from ``reader.refs()`` and cover the
whole dataset. Everything that needs a record (rates, lengths, labels, texts, skip reasons) comes
from an evenly spaced, deterministic sample of ``sample`` records (default 1000; 0 = all), read in
parallel: the reader API yields labels and texts only with the signal, and they live in different
places per layout (CSV rows, header comments, .mat files); 1000 records take seconds and estimate
fractions to about +-3 %.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from etp_search.errors import DataError

#: Reports and labels are counted over at most this many rows (the first ones) of a big store.
COUNT_ROWS = 1_000_000

#: Records `info DATA_DIR` reads for rates, lengths, labels and texts (0 = all).
DEFAULT_SAMPLE = 1000
#: Tasks reported per layout; other layouts get every task that matches at least one record.
_TASKS_FOR_FORMAT = {
    "ptbxl": ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm"),
    "cpsc2018": ("cpsc2018",),
    "cinc": ("cpsc2018",),
}


def _stats(text_source: str, rec: Any, _signal: Any, _flags: dict) -> dict[str, Any]:
    """Small per-record facts (the signal itself never leaves the worker)."""
    texts = dict((rec.meta or {}).get("texts") or {})
    texts.setdefault(text_source, rec.text or "")
    return {
        "fs": float(rec.fs),
        "seconds": rec.signal.shape[-1] / float(rec.fs),
        "labels": dict(rec.labels or {}),
        "texts": {k: bool(str(v).strip()) for k, v in texts.items()},
        "missing_leads": len((rec.meta or {}).get("missing_leads") or []),
    }


def sample_refs(refs: list[str], sample: int) -> list[str]:
    """Evenly spaced, deterministic subset (all refs when sample <= 0 or >= len(refs))."""
    if sample <= 0 or sample >= len(refs):
        return list(refs)
    idx = np.unique(np.linspace(0, len(refs) - 1, sample).round().astype(int))
    return [refs[i] for i in idx]


def describe_folder(reader: Any, sample: int = DEFAULT_SAMPLE, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Describe a dataset: counts over all refs, everything else over a sample of records (a
    reader over several folders adds ``duplicate_ids``, the ids met twice and kept once)."""
    from functools import partial

    from tqdm.auto import tqdm

    from etp_search.labels import get_task, list_tasks
    from etp_search.pipeline import read_records
    from etp_search.signal_cache import default_workers

    refs = reader.refs()
    chosen = sample_refs(refs, sample)
    workers = default_workers() if workers is None else workers
    skipped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(chosen), unit="rec", desc="info", disable=not progress)
    transform = partial(_stats, getattr(reader, "text_source", None) or "default")
    chunks = read_records(reader, chosen, None, transform, workers=0 if workers <= 1 or len(chosen) < 64 else workers)
    try:
        for chunk in chunks:
            for item in chunk:
                bar.update(1)
                if item.skip is None:
                    rows.append(item.value)
                else:
                    skipped[item.skip] += 1
    finally:
        bar.close()
        del chunks  # shuts the pipeline's workers down now

    secs = np.array([r["seconds"] for r in rows])
    fmt = reader.format_name
    names = _TASKS_FOR_FORMAT.get(fmt, tuple(list_tasks()))
    tasks: dict[str, Any] = {}
    for name in names:
        task = get_task(name)
        y = task.matrix([r["labels"] for r in rows]) if rows else np.zeros((0, len(task.classes)))
        labelled = int(y.any(axis=1).sum())
        if labelled == 0 and fmt not in _TASKS_FOR_FORMAT:
            continue
        counts = y.sum(axis=0).astype(int)
        tasks[name] = {"classes": len(task.classes), "labelled": labelled,
                       "counts": {c: int(n) for c, n in zip(task.classes, counts)}}
    coverage: dict[str, float] = {}
    for src in sorted({s for r in rows for s in r["texts"]}):
        coverage[src] = float(np.mean([r["texts"].get(src, False) for r in rows]))
    summary = getattr(reader, "summary", None)
    out = {
        "data_dir": str(Path(reader.root)),
        "format": fmt,
        "records_found": len(refs),
        "listed_without_files": int(getattr(summary, "missing_files", 0) or 0),
        "sampled": len(chosen),
        "sample_rule": "all records" if len(chosen) == len(refs) else "evenly spaced over refs()",
        "read": len(rows),
        "skipped": dict(sorted(skipped.items())),
        "sampling_rates": {str(int(k) if float(k).is_integer() else k): v
                           for k, v in sorted(Counter(r["fs"] for r in rows).items())},
        "seconds": ({"min": float(secs.min()), "median": float(np.median(secs)), "max": float(secs.max())} if rows
                    else {"min": math.nan, "median": math.nan, "max": math.nan}),  # no record read: no lengths
        "records_with_missing_leads": sum(1 for r in rows if r["missing_leads"]),
        "tasks": tasks,
        "text_coverage": coverage,
        "top_label_codes": dict(Counter(c for r in rows for c in r["labels"]).most_common(10)),
    }
    if getattr(reader, "duplicates", 0):  # a MultiReader over several folders counts ids met twice
        out["duplicate_ids"] = reader.duplicates
    return out


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


#: Rows read at a time by ``verify_store`` (65,536 x 256 float32 = 64 MB per vector read).
VERIFY_ROWS = 65_536


def verify_store(path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Read all of a store and hash its index files; raise the store's or index's one-line error at
    the first damage, else return what was checked."""
    import time

    from tqdm.auto import tqdm

    from indexing.index_files import default_index_path, load_index, sidecar_path
    from indexing.store import EmbeddingStore

    t0 = time.perf_counter()
    with EmbeddingStore.open(path) as s:
        n = len(s)
        reads: list[tuple[str, Any]] = [("ecg", lambda r: s.vectors("ecg", r))]
        if s.has_text:
            reads.append(("text", lambda r: s.vectors("text", r)))
        reads += [("ids", s.ids_at), ("texts", s.texts_bytes), ("labels", s.labels_bytes)]
        reads += [(f"meta/{c}", lambda r, c=c: s.meta(c, r)) for c in s.meta_columns]
        with tqdm(total=n * len(reads), unit="cell", desc="verify", disable=not progress) as bar:
            for start in range(0, n, VERIFY_ROWS):
                rows = np.arange(start, min(n, start + VERIFY_ROWS))
                for _, read in reads:
                    read(rows)
                    bar.update(len(rows))
        indexes = {}
        for which in ("ecg", "text") if s.has_text else ("ecg",):
            ipath = default_index_path(s.path, which)
            if not ipath.exists() and not sidecar_path(ipath).exists():
                indexes[which] = "missing (queries search exactly)"
                continue
            _, info = load_index(ipath, s.uuid, n, which=which, allow_behind=True, full=True)
            indexes[which] = f"SHA-256 matches its sidecar ({int(info['n_rows'])} rows)"
    return {"store": str(path), "rows": n, "columns_read": [name for name, _ in reads], "indexes": indexes,
            "seconds": round(time.perf_counter() - t0, 2)}


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

"""`etp-search info DATA_DIR`: what a dataset folder holds, without preparing it.

Record counts (found, listed without files) come from ``reader.refs()`` and cover the whole
dataset. Everything that needs a record (rates, lengths, labels, texts, skip reasons) comes from an
evenly spaced, deterministic sample of ``--sample`` records (default 1000; 0 = all), read in
parallel. Why a sample rather than headers only: the reader API yields labels and texts only with
the signal, and labels/texts live in different places per layout (CSV rows, header comments, .mat
files); a 1000-record sample takes seconds and estimates fractions to about +-3 %.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from etp_search.cli.common import ProgressOpt, emit, emit_json, format_table, user_errors

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


def dataset_info(reader: Any, sample: int = DEFAULT_SAMPLE, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Describe a dataset: counts over all refs, everything else over a sample of records."""
    from tqdm.auto import tqdm

    from etp_search.labels import get_task, list_tasks
    from etp_search.signal_cache import default_workers

    refs = reader.refs()
    chosen = sample_refs(refs, sample)
    workers = default_workers() if workers is None else workers
    skipped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(chosen), unit="rec", desc="info", disable=not progress)
    from functools import partial

    from etp_search.pipeline import read_records

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

    secs = np.array([r["seconds"] for r in rows]) if rows else np.array([np.nan])
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
    return {
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
        "seconds": {"min": float(np.nanmin(secs)), "median": float(np.nanmedian(secs)), "max": float(np.nanmax(secs))},
        "records_with_missing_leads": sum(1 for r in rows if r["missing_leads"]),
        "tasks": tasks,
        "text_coverage": coverage,
        "top_label_codes": dict(Counter(c for r in rows for c in r["labels"]).most_common(10)),
    }


def _print(info: dict[str, Any]) -> None:
    s = info["seconds"]
    overview = [
        {"field": "folder", "value": info["data_dir"]},
        {"field": "format", "value": info["format"]},
        {"field": "records found", "value": info["records_found"]},
        {"field": "listed without files", "value": info["listed_without_files"]},
        *([{"field": "duplicate ids (kept once)", "value": info["duplicate_ids"]}] if info.get("duplicate_ids") else []),
        {"field": "sampled", "value": f"{info['sampled']} ({info['sample_rule']})"},
        {"field": "read / skipped", "value": f"{info['read']} / {sum(info['skipped'].values())}"
                                              + "".join(f"; {k}: {v}" for k, v in info["skipped"].items())},
        {"field": "sampling rates (Hz: records)", "value": ", ".join(f"{k}: {v}" for k, v in info["sampling_rates"].items())},
        {"field": "length s (min/median/max)", "value": f"{s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f}"},
        {"field": "records with missing leads", "value": info["records_with_missing_leads"]},
    ]
    typer.echo(format_table(overview))
    if info["tasks"]:
        typer.echo("")
        rows = []
        for name, t in info["tasks"].items():
            top = sorted(t["counts"].items(), key=lambda kv: -kv[1])[:6]
            rows.append({"task": name, "classes": t["classes"], "labelled": t["labelled"],
                         "most frequent (in sample)": ", ".join(f"{c} {n}" for c, n in top if n)})
        typer.echo(format_table(rows, max_width=90))
    if info["text_coverage"]:
        typer.echo("")
        emit(({"text source": k, "non-empty": f"{v:.1%}"} for k, v in info["text_coverage"].items()), as_json=False)


@user_errors
def info(
    data_dir: Annotated[list[Path], typer.Argument(
        help="Dataset folder(s) (PTB-XL, CPSC2018, CinC, MIMIC-IV-ECG, WFDB, NumPy sidecar .json) or a list file; "
             "several are described together, each record id once.")],
    sampling_rate: Annotated[Optional[int], typer.Option("--sampling-rate", help="PTB-XL files to describe: 100 or 500.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Dataset layout; detected when omitted.")] = None,
    sample: Annotated[int, typer.Option(help="Records to read for rates, lengths, labels and texts (0 = all).", min=0)] = DEFAULT_SAMPLE,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: all cores).", min=0)] = None,
    progress: ProgressOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Describe a dataset folder (layout, records, rates, lengths, labels per task, text coverage), or
    a store from `index` / a cache from `prepare` (what it holds, what made it, its index files)."""
    from etp_search.readers import open_dataset

    if len(data_dir) == 1 and data_dir[0].is_file() and data_dir[0].suffix in (".h5", ".hdf5"):
        from etp_search.describe import describe_file

        described = describe_file(data_dir[0])
        if as_json:
            emit_json(described)
        else:
            _print_file(described)
        return
    reader = open_dataset(data_dir[0] if len(data_dir) == 1 else data_dir, fmt=fmt, sampling_rate=sampling_rate)
    result = dataset_info(reader, sample=sample, workers=workers, progress=progress)
    duplicates = getattr(reader, "duplicates", 0)  # a MultiReader over several folders counts ids met twice
    if duplicates:
        result["duplicate_ids"] = duplicates
    if as_json:
        emit_json(result)
    else:
        _print(result)


def _print_file(d: dict[str, Any]) -> None:
    """A store or a cache as field / value rows (nested facts on one line each)."""
    rows = []
    for key, value in d.items():
        if key == "indexes":
            for which, facts in value.items():
                line = facts["state"] if "factory" not in facts else (
                    f"{facts['factory']} over {facts['rows_covered']} rows, recall@10 {facts.get('recall_at_10')}"
                    + (f", nprobe {facts['nprobe']}" if facts.get("nprobe") else "") + f"; {facts['state']}")
                rows.append({"field": f"{which} index", "value": line})
        elif isinstance(value, dict):
            rows.append({"field": key, "value": ", ".join(f"{k} {v}" for k, v in value.items()) or "-"})
        elif isinstance(value, list):
            rows.append({"field": key, "value": ", ".join(str(v) for v in value) or "-"})
        else:
            rows.append({"field": key, "value": value})
    typer.echo(format_table(rows, max_width=100))

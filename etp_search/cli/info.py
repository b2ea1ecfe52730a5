"""`etp-search info DATA_DIR | FILE.h5`: what a dataset folder, a store or a signal cache holds.

The facts come from ``etp_search.describe`` (``describe_folder`` reads an evenly spaced sample of
``--sample`` records; ``describe_file`` a store or a cache); this module parses and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from etp_search.cli.common import ProgressOpt, emit, emit_json, fail, format_table, user_errors
from etp_search.describe import DEFAULT_SAMPLE


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
    typer.echo(format_table(overview, max_width=200))  # a folder path is never cut
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
    verify: Annotated[bool, typer.Option("--verify", help="With a store: read every row of every column and hash "
                                                          "its index files afresh (damage is named).")] = False,
    progress: ProgressOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Describe a dataset folder (layout, records, rates, lengths, labels per task, text coverage), or
    a store from `index` / a cache from `prepare` (what it holds, what made it, its index files)."""
    from etp_search.readers import open_dataset

    one_h5 = len(data_dir) == 1 and data_dir[0].is_file() and data_dir[0].suffix in (".h5", ".hdf5")
    if verify and not one_h5:  # a folder or a sidecar .json would be described with --verify unused
        raise fail("--verify checks an embedding store: pass STORE.h5")
    if one_h5:
        from etp_search.describe import describe_file, verify_store

        described = describe_file(data_dir[0])
        if verify:
            if described["kind"] != "embedding store":
                raise fail("--verify checks an embedding store; a signal cache's checksums are checked as it is read")
            described["verified"] = verify_store(data_dir[0], progress=progress)
        if as_json:
            emit_json(described)
        else:
            _print_file(described)
        return
    from etp_search.describe import describe_folder

    reader = open_dataset(data_dir[0] if len(data_dir) == 1 else data_dir, fmt=fmt, sampling_rate=sampling_rate)
    result = describe_folder(reader, sample=sample, workers=workers, progress=progress)
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
        elif key == "verified":
            rows.append({"field": "verified", "value": f"{value['rows']} rows x {len(value['columns_read'])} columns "
                                                       f"read in {value['seconds']} s; no damage"})
            rows += [{"field": f"verified {w} index", "value": v} for w, v in value["indexes"].items()]
        elif isinstance(value, dict):
            rows.append({"field": key, "value": ", ".join(f"{k} {v}" for k, v in value.items()) or "-"})
        elif isinstance(value, list):
            rows.append({"field": key, "value": ", ".join(str(v) for v in value) or "-"})
        else:
            rows.append({"field": key, "value": value})
    typer.echo(format_table(rows, max_width=100))

"""`etp-search prepare DATA_DIR`: read, preprocess and cache every record in one HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from etp_search.cli.common import ProgressOpt, emit, emit_json, setup_logging, skip_rows, user_errors


def _summary_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    skipped = s.get("skipped") or {}
    rows = [
        {"field": "cache", "value": s["out"]},
        {"field": "status", "value": "up to date (use --force to rebuild)" if s["up_to_date"] else "written"},
        {"field": "format", "value": s["format"]},
        {"field": "preset", "value": s["preset"]},
        {"field": "records written", "value": s["records"]},
        {"field": "records found", "value": s["refs"]},
        {"field": "skipped", "value": sum(skipped.values())},
    ]
    rows += skip_rows(s)
    rows.append({"field": "listed without files", "value": s["missing_files"]})
    if s.get("duplicate_ids"):
        rows.append({"field": "duplicate ids (kept once)", "value": s["duplicate_ids"]})
    if s.get("resumed_from"):
        rows.append({"field": "resumed after", "value": f"{s['resumed_from']} records"})
    if s.get("records_per_s"):
        rows.append({"field": "records/s", "value": f"{s['records_per_s']:.1f} ({s['seconds']:.1f} s)"})
    return rows


@user_errors
def prepare(
    data_dir: Annotated[list[Path], typer.Argument(
        help="Dataset folder(s) (PTB-XL, CPSC2018, CinC, MIMIC-IV-ECG, WFDB, NumPy sidecar .json) or a list file; "
             "several are cached together, each record id once.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Cache file (default: etp-data/signals-<format>-<folder>-<hash>-<preset>.h5 under the working directory).")] = None,
    preset: Annotated[str, typer.Option(help="Preprocessing preset: etp-100hz, etp-500hz, raw-100hz, raw-500hz.")] = "etp-100hz",
    sampling_rate: Annotated[Optional[int], typer.Option(
        "--sampling-rate", help="PTB-XL files to read: 100 or 500 (default: the preset's rate).")] = None,
    text_source: Annotated[str, typer.Option(
        "--text-source", help="Default text: scp_en, report or column:<name>; all sources are cached.")] = "scp_en",
    fmt: Annotated[Optional[str], typer.Option("--format", help="Dataset layout; detected when omitted.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: all cores).", min=0)] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Records per committed batch; an interruption loses at most one.", min=1)] = 256,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the cache is up to date.")] = False,
    progress: ProgressOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output (e.g. each skipped record).")] = False,
) -> None:
    """Preprocess every record of DATA_DIR into one HDF5 signal cache (parallel, resumable)."""
    if verbose:  # without it only warnings are printed, as before
        setup_logging(True)
    from etp_search.preprocess import get_preset
    from etp_search.signal_cache import build_cache
    from etp_search.signal_cache.locate import default_cache_path, open_reader

    p = get_preset(preset)
    reader = open_reader(data_dir, p, sampling_rate=sampling_rate, text_source=text_source, fmt=fmt)
    if out is None:
        from etp_search.readers import dataset_paths

        out = default_cache_path(reader.format_name, p.name, dataset_paths(data_dir))
    target = out
    summary = build_cache(reader, target, p, workers=workers, batch_size=batch_size, progress=progress, force=force)
    duplicates = getattr(reader, "duplicates", 0)  # a MultiReader over several folders counts ids met twice
    if duplicates:
        summary["duplicate_ids"] = duplicates
    if as_json:
        emit_json(summary)
        return
    if summary["up_to_date"]:
        typer.echo(f"{target} is up to date ({summary['records']} records); use --force to rebuild", err=True)
    emit(_summary_rows(summary), as_json=False, max_width=200)  # paths are never cut

"""`etp-search index DATA_DIR`: embed a dataset folder (or signal cache) into the store and index it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from etp_search.cli.common import (DEFAULT_STORE, ProgressOpt, emit_json, fail, format_table, setup_logging, skip_rows,
                                   user_errors)

#: Under torchrun: how long a rank may wait in a collective for the others (6 h).
INDEX_GROUP_TIMEOUT_S = 6 * 3600.0


@user_errors
def index(
    data_dir: Annotated[list[Path], typer.Argument(help="Dataset folder(s) (PTB-XL, CPSC2018, CinC, WFDB folder, MIMIC-IV-ECG, NumPy sidecar .json), a list file, or a signal cache .h5 from `prepare`.")],
    store: Annotated[Path, typer.Option(help="Embedding store to create or append to.")] = DEFAULT_STORE,
    checkpoint: Annotated[Optional[str], typer.Option(help="Checkpoint folder; default: the shipped starter checkpoint; 'random' = random-init baseline.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="ECGs per encoder batch.")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Reader processes (default: cores - 1, at least 1).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 (default: cuda when available).")] = None,
    sampling_rate: Annotated[Optional[int], typer.Option(help="PTB-XL: read records100 (100) or records500 (500); default from the checkpoint's preset.")] = None,
    text_source: Annotated[Optional[str], typer.Option(help="scp_en, report or column:<name>; default: the checkpoint's.")] = None,
    factory: Annotated[str, typer.Option(help="FAISS index: 'auto' (Flat below 200k rows, IVF-Flat to 3M, IVF-PQ+refine beyond or when --max-index-memory says so) or a factory string like 'IVF1024,Flat'.")] = "auto",
    max_index_memory: Annotated[Optional[str], typer.Option(help="RAM budget of each index for --factory auto, e.g. 4G or 512M (default: no limit).")] = None,
    ondisk_lists: Annotated[bool, typer.Option("--ondisk-lists", help="For --factory auto: keep IVF inverted lists in STORE.<ecg|text>.faiss.ivfdata, memory-mapped by queries (outside the RAM budget; rebuilt, not extended, when rows are added).")] = False,
    append_every: Annotated[int, typer.Option(min=1, help="Rows embedded before they are appended together (their new reports go through the text tower in one call); 1: append each batch at once, so a served store sees rows sooner.")] = 2048,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Start the store afresh (e.g. after changing checkpoint).")] = False,
    rebuild_index: Annotated[bool, typer.Option("--rebuild-index", help="Rebuild the FAISS indexes from the store.")] = False,
    progress: ProgressOpt = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    """Read -> preprocess -> encode ECGs and reports -> store -> FAISS index. Resumable; never duplicates."""
    setup_logging(verbose)
    for d in data_dir:
        if not d.exists():
            raise fail(f"{d} does not exist; pass a dataset folder or a signal cache .h5")
    from etp_search.export import index_data
    from indexing.plan import PlanError, parse_bytes

    try:
        budget = parse_bytes(max_index_memory) if max_index_memory is not None else None
    except PlanError as e:
        raise fail(f"--max-index-memory: {e}") from None
    if budget is not None and factory != "auto":
        raise fail("--max-index-memory applies to --factory auto; drop one of the two")
    if ondisk_lists and factory != "auto":
        raise fail("--ondisk-lists applies to --factory auto; drop one of the two")

    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun: one process group (gloo on CPU, NCCL with one GPU per rank, LOCAL_RANK ->
        # cuda:N); each rank embeds its shard, rank 0 merges and indexes (etp_search.export.shards).
        from training.distributed import cleanup, init_distributed

        # Every rank waits at the end for rank 0's merge and FAISS build (so none tears the group
        # down under it), which at millions of rows takes longer than torch's default 30 minutes.
        env = init_distributed(device, timeout_s=INDEX_GROUP_TIMEOUT_S)
        rank, world, device = env.rank, env.world_size, env.device
    try:
        summary = index_data(data_dir[0] if len(data_dir) == 1 else data_dir, store, checkpoint, batch_size=batch_size, workers=workers, device=device,
                             rebuild=rebuild, rebuild_index=rebuild_index, sampling_rate=sampling_rate,
                             text_source=text_source, factory=factory, max_index_memory=budget, ondisk_lists=ondisk_lists,
                             progress=progress and rank == 0, rank=rank, world_size=world,
                             append_every=append_every).as_dict()
    finally:
        if world > 1:
            logging.getLogger(__name__).info("rank %d/%d: leaving the process group", rank, world)
            cleanup()
    if rank != 0:
        return  # rank 0 prints the job's summary
    if json_out:
        emit_json(summary)
        return
    rows = [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, dict)]
    for which in ("ecg_index", "text_index"):
        if which in summary:
            info = summary[which]
            rows.append({"field": which, "value": f"{info['factory']} over {info['n_rows']} rows, recall@10 {info['recall_at_10']}"})
    if summary["skipped"]:
        rows.append({"field": "skipped", "value": sum(summary["skipped"].values())})
        rows += skip_rows(summary)
    typer.echo(format_table(rows, max_width=100))

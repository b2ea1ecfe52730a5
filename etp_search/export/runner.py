"""Run the export: stream batches through the model into the store, then build its indexes."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

import torch

import etp_search
from etp_search.errors import DataError, EtpError, StoreMismatchError
from etp_search.export import shards
from etp_search.export.mapper import EtpMapper
from etp_search.export.source import NORM_COLUMN, open_source
from etp_search.export.summary import IndexInfo, IndexSummary
from etp_search.export.writer import StoreWriter
from etp_search.models import checkpoint_fingerprint, load_checkpoint
from etp_search.models.config import EtpConfig
from etp_search.models.resolve import RANDOM, config_of, pick_device, resolve_checkpoint
from indexing.index_files import IndexBuilder
from indexing.store import EmbeddingStore
from etp_search.preprocess import get_preset
from etp_search.readers.base import merge_skips, nothing_read

logger = logging.getLogger(__name__)

#: Skipped records: (reason -> count, reason -> the first ids), as ``note_skip`` keeps them.
Skips = tuple[dict[str, int], dict[str, list[str]]]


def provenance_for(ckpt: Path, cfg: EtpConfig, data: Path | list[Path], fmt: str, text_source: str) -> dict[str, Any]:
    preset = get_preset(cfg.preset)
    return {
        "checkpoint_sha256": checkpoint_fingerprint(ckpt),
        "checkpoint_path": str(ckpt.resolve()),
        "model_config": cfg.to_dict(),
        "embed_dim": cfg.embed_dim,
        "preset": preset.to_dict(),
        "sampling_rate": preset.fs,
        "text_source": text_source,
        "dataset_format": fmt,
        "data_dir": str(data.resolve()) if isinstance(data, Path) else ";".join(str(d.resolve()) for d in data),
        "package_version": etp_search.__version__,
    }


def index_data(
    data: str | Path | Sequence[str | Path],
    store: str | Path,
    checkpoint: str | Path | None = None,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    rebuild: bool = False,
    rebuild_index: bool = False,
    sampling_rate: int | None = None,
    text_source: str | None = None,
    factory: str = "auto",
    max_index_memory: int | None = None,
    ondisk_lists: bool = False,
    build_index: bool = True,
    builder: IndexBuilder | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    append_every: int | None = None,
) -> IndexSummary:
    """Embed every record of ``data`` (dataset folder or signal cache) into ``store`` and index it.

    Resumable: records already in the store are skipped, so an interrupted run continues where it
    stopped, and indexing the same folder twice adds nothing.

    ``factory`` is the FAISS index-factory string ("auto", "Flat", "IVF1024,Flat", ...); ``builder``
    replaces how a new index is made (``indexing.index_files.IndexBuilder``), e.g. a streaming one.
    ``max_index_memory`` (bytes) and ``ondisk_lists`` (IVF lists in a memory-mapped
    ``STORE.<which>.faiss.ivfdata`` file, checked by SHA-256 like the index) apply to "auto".

    ``rank``/``world_size`` (from torchrun, see ``etp_search.export.shards``): each rank embeds
    the records at positions ``rank`` mod ``world_size`` into its own shard store, then rank 0
    merges the shards into ``store`` in source order (the same store as one process) and indexes
    it. Needs the process group initialised (``training.distributed.init_distributed``).

    ``append_every`` (default ``TEXT_DEFER_ROWS``): rows whose report vectors wait to be encoded
    together before they are appended; 1 appends each batch as soon as it is embedded (rows reach a
    served store sooner, the report tower runs in smaller calls).

    Returns:
        IndexSummary: records found, written now, skipped by reason, total rows, seconds, rec/s, indexes.
    """
    paths = Path(data) if isinstance(data, (str, Path)) else [Path(d) for d in data]  # several folders: one source
    store = Path(store)
    device = pick_device(device)
    if store.is_dir():
        raise EtpError(f"--store {store} is a folder; pass a file path such as {store / 'store.h5'}")
    # Cheap checks first (the dataset, the factory), so a mistake costs nothing and leaves no files.
    cfg0 = config_of(checkpoint)
    preset = get_preset(cfg0.preset)
    text_source = text_source or cfg0.text_source
    if sampling_rate is None:
        sampling_rate = int(preset.fs) if int(preset.fs) in (100, 500) else None
    # Opened once, before the store, so a wrong folder fails without touching any store.
    source = open_source(paths, preset, text_source=text_source, sampling_rate=sampling_rate,
                         batch_size=batch_size, workers=workers)
    if append_every is not None and append_every < 1:
        raise EtpError(f"--append-every must be at least 1 row (got {append_every})")
    if source.total == 0:
        raise DataError(f"{paths} holds no readable {source.format_name} records; check the folder (`etp-search info {paths}`)")
    if ondisk_lists and factory != "auto":
        raise EtpError("--ondisk-lists applies to --factory auto; drop one of the two")
    if factory != "auto":
        from indexing.faiss_index import check_factory

        check_factory(factory, cfg0.embed_dim)
    if str(checkpoint) == RANDOM and store.is_file() and not rebuild:
        _check_random_store(store)
    ckpt = resolve_checkpoint(checkpoint, store_path=store, create=True)
    model = load_checkpoint(ckpt, device=device, load_text=True)
    cfg = model.cfg
    prov = provenance_for(ckpt, cfg, paths, source.format_name, text_source)
    mapper = EtpMapper(model, device)
    if world_size > 1:
        return _index_sharded(source, store, ckpt, cfg.embed_dim, prov, mapper, device, rank=rank,
                              world_size=world_size, rebuild=rebuild, progress=progress, append_every=append_every,
                              finish_kw=dict(build_index=build_index, factory=factory, rebuild_index=rebuild_index,
                                             builder=builder, max_index_memory=max_index_memory,
                                             ondisk_lists=ondisk_lists))
    fresh = rebuild or not store.exists()
    writer = StoreWriter(store, cfg.embed_dim, prov, rebuild=rebuild)
    try:
        already = source.total - len(source.todo(writer.done_ids))
        left = shards.existing_shards(store)
        if left and rebuild:
            for p in left:
                shards.remove_store_files(p)
        elif left:
            # A killed torchrun `index`: keep what its ranks embedded, embed the rest into a shard of
            # this process's own, then merge every shard in source order, so the store is the one an
            # uninterrupted run writes (merging first and appending the rest would reorder rows).
            in_left = np.zeros(source.total, dtype=bool)
            for p in left:
                with EmbeddingStore.open(p) as s:
                    in_left |= s.contains(source.ids)
            rest = shards.shard_path(store, 0, 1)
            shard = StoreWriter(rest, cfg.embed_dim, prov)
            try:
                todo = [i for i in source.todo(writer.done_ids, shard.done_ids) if not in_left[i]]
                logger.info("%s; %d to embed, %d in the shards of an interrupted torchrun run or in %s",
                            source.summary_line, len(todo), source.total - len(todo), store)
                skipped, seconds = _embed(source, todo, shard, mapper, progress, defer_rows=append_every)
                if shard.written:
                    shard.store.compact()
            finally:
                shard.close()
            found = sorted(set(left) | {rest})
            n = shards.merge_shards(writer, found, source.ids)
            logger.info("took %d rows from %d shard stores", n, len(found))
            left = found
        if not left or rebuild:
            todo = source.todo(writer.done_ids)
            logger.info("%s; %d to embed, %d already in %s", source.summary_line, len(todo),
                        source.total - len(todo), store)
            skipped, seconds = _embed(source, todo, writer, mapper, progress, defer_rows=append_every)
            if fresh and todo and len(writer.store) == 0:  # every record skipped: not the folder meant
                writer.close()
                shards.remove_store_files(store)  # the empty store this run made
                raise nothing_read(paths, len(todo), *skipped)
        index_info = writer.finish(build_index=build_index, factory=factory, rebuild_index=rebuild_index,
                                   builder=builder, max_index_memory=max_index_memory, ondisk_lists=ondisk_lists)
        for p in left:
            shards.remove_store_files(p)
    finally:
        writer.close()
    return _summary(store, ckpt, device, source, writer.written, already, skipped, seconds,
                    int(index_info["rows"]), index_info)


def _check_random_store(store: Path) -> None:
    """Refuse ``--checkpoint random`` into a store of another checkpoint before the random-init
    checkpoint (35 MB beside the store) is written: it was written first, then refused. A store of a
    random initialisation names a ``*.random-init`` folder (perhaps moved with it); the fingerprint
    check after ``resolve_checkpoint`` still compares the weights."""
    with EmbeddingStore.open(store) as s:
        built_with = str(s.provenance.get("checkpoint_path") or "")
    if built_with and not built_with.endswith(".random-init"):
        raise StoreMismatchError(
            f"store {store} was written by checkpoint {built_with}, not by a random initialisation; pass "
            f"that checkpoint with --checkpoint, or index the random baseline into a new store with "
            f"`etp-search index DATA_DIR --checkpoint random --store NEW.h5` (--rebuild would replace this one)")


def _summary(store: Path, ckpt: Path, device: str, source: Any, written: int, already: int,
             skipped: Skips, seconds: float, rows: int,
             index_info: dict[str, Any] | None = None) -> IndexSummary:
    """The ``IndexSummary`` of a run (one process, one rank, or the merged torchrun job)."""
    index_info = index_info or {}
    return IndexSummary(
        store=str(store), checkpoint=str(ckpt), device=device, format=source.format_name,
        records_found=source.total, written=written, already_stored=already,
        skipped=skipped[0], skipped_examples=skipped[1], seconds=round(seconds, 2),
        records_per_s=round(written / seconds, 1) if seconds > 0 and written else None,
        rows=rows, **{k: IndexInfo(**index_info[k]) for k in ("ecg_index", "text_index") if k in index_info})


#: Rows whose report vectors ``_embed`` defers before writing them (see there): a kill loses at most
#: these (they are embedded again on resume); 2,048 PTB-XL rows hold ~600 distinct reports.
TEXT_DEFER_ROWS = 2048


class _DeferredTexts:
    """Batches whose ECG vectors are made and whose report vectors wait (see ``_embed``)."""

    def __init__(self, writer: StoreWriter, mapper: EtpMapper, limit: int) -> None:
        self.writer, self.mapper, self.limit = writer, mapper, limit
        self.pending: list[tuple[Any, np.ndarray]] = []
        self.rows = 0
        self.failed = False

    def add(self, batch: Any, ecg: np.ndarray) -> None:
        batch.signals = batch.signals[:0]  # the vectors are made: free the signals while waiting
        self.pending.append((batch, ecg))
        self.rows += len(batch.ids)
        if self.rows >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Encode every new report of the waiting batches in one call, then append them in order
        (each batch leaves ``pending`` once written, so a flush cut short can be run again). A
        Ctrl-C leaves ``failed`` unset: ``_embed`` runs the flush once more before it stops."""
        if not self.pending:
            return
        try:
            self.mapper.texts([t for b, _ in self.pending for t in b.texts])
            while self.pending:
                b, ecg = self.pending[0]
                self.writer.write(b, ecg, self.mapper.texts(b.texts))
                self.pending.pop(0)
                self.rows -= len(b.ids)
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.failed = True
            raise


def _embed(source: Any, todo: list[int], writer: StoreWriter, mapper: EtpMapper, progress: bool,
           die_after: int | None = None, defer_rows: int | None = None) -> tuple[Skips, float]:
    """Read -> encode -> append the records at positions ``todo``; returns ((skips by reason, their
    first ids by reason), seconds).

    ECG vectors are made batch by batch as the reader delivers; the report vectors of up to
    ``defer_rows`` rows (default ``TEXT_DEFER_ROWS``) wait, so that the report tower gets all their
    new distinct reports in one length-sorted call instead of a few unsorted ones per batch (reports
    repeat; the tower, not the ECG encoder, limited ``index``). Then the waiting batches are appended
    whole, in reading order: the store still only ever sees whole batches, and a kill loses at most
    the waiting rows, which the next run embeds again.
    """
    deferred = _DeferredTexts(writer, mapper, TEXT_DEFER_ROWS if defer_rows is None else max(1, int(defer_rows)))
    skipped: Skips = ({}, {})
    t0 = time.perf_counter()
    n_batches = 0
    with tqdm(total=len(todo), unit="rec", desc="index", disable=not progress or not todo, dynamic_ncols=True) as bar:
        try:
            for batch in source.batches(todo):
                merge_skips(*skipped, batch.skipped, batch.skipped_examples)
                if batch.ids:
                    ecg, norms = mapper.ecg_with_norms(batch.signals)
                    for row, norm in zip(batch.meta, norms.tolist()):
                        row[NORM_COLUMN] = norm
                    deferred.add(batch, ecg)
                bar.update(len(batch.ids) + sum(batch.skipped.values()))
                n_batches += 1
                if die_after is not None and n_batches >= die_after:
                    deferred.flush()  # the hook stands for a kill right after the N-th batch was written
                    logger.warning("test hook %s: leaving after %d batches", shards.DIE_ENV, n_batches)
                    os._exit(1)
            deferred.flush()  # inside the try: a Ctrl-C while the last reports are encoded keeps the rows too
        except BaseException as e:
            # A reader that failed mid-run (a damaged cache) or Ctrl-C: the rows embedded so far are
            # kept (their reports encoded now, seconds), so the next run resumes after them.
            if not deferred.failed and deferred.pending:
                if isinstance(e, KeyboardInterrupt):
                    logger.warning("interrupted: saving the %d embedded rows (Ctrl-C again drops them)", deferred.rows)
                deferred.flush()
            raise
    return skipped, time.perf_counter() - t0


def _index_sharded(source: Any, store: Path, ckpt: Path, dim: int, prov: dict[str, Any], mapper: EtpMapper,
                   device: str, *, rank: int, world_size: int, rebuild: bool, progress: bool,
                   finish_kw: dict[str, Any], append_every: int | None = None) -> IndexSummary:
    """One rank's part of a torchrun ``index`` (see ``etp_search.export.shards``)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise EtpError("index with world_size > 1 needs the torch process group; start it with torchrun "
                       "(`torchrun --nproc-per-node N -m etp_search index ...`)")
    main: StoreWriter | None = None
    try:
        if rank == 0:
            # Rank 0 is the main store's only writer, from before any rank reads it to the end.
            main = StoreWriter(store, dim, prov, rebuild=rebuild)
            if rebuild:
                for p in shards.existing_shards(store):
                    shards.remove_store_files(p)
        dist.barrier()  # the main store exists (and stale shards are gone) before the others read it
        _check_same_records(source.ids, rank)
        # Which source records each store holds: one lookup in its id map, no copy of its ids.
        if main is not None:
            in_main, main_rows = main.stored(source.ids), len(main.store)
        else:
            with EmbeddingStore.open(store) as s:
                in_main, main_rows = s.contains(source.ids), len(s)
        already = int(in_main.sum())
        shard = StoreWriter(shards.shard_path(store, rank, world_size), dim, prov)
        try:
            in_shard = shard.stored(source.ids)
            mine = [i for i in shards.shard_positions(source.total, rank, world_size)
                    if not (in_main[i] or in_shard[i])]
            logger.info("rank %d/%d: %s; %d to embed in shard %s", rank, world_size, source.summary_line,
                        len(mine), shard.path.name)
            skipped, seconds = _embed(source, mine, shard, mapper, progress and rank == 0,
                                      shards.die_hook(rank), defer_rows=append_every)
            if shard.written:
                shard.store.compact()
        finally:
            shard.close()
        # The job's figures: the slowest rank's embedding time, every rank's skips.
        slowest = torch.tensor([seconds], dtype=torch.float64, device=shards.collective_device())
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        all_skipped = _gather_skips(skipped)
        dist.barrier()  # every shard is complete
        if main is None:
            out = _summary(store, ckpt, device, source, shard.written, already, skipped, seconds,
                           main_rows + shard.written)
            # Wait for rank 0's merge: a rank that leaves and tears down the group while rank 0 still
            # works can make gloo abort rank 0 ("connection closed by peer"; destroy is collective).
            # Rank 0 says whether it succeeded, so a failed merge ends every rank now, not at the
            # group's timeout (hours, for ranks started by hand under NCCL).
            if not _all_ok(True):
                raise EtpError(f"rank {rank}: rank 0 failed to merge the shards (its error is in its log); the "
                               "shards are kept: run the same `etp-search index` again to finish")
            return out
        t0 = time.perf_counter()
        try:
            found = shards.existing_shards(store)
            merged = shards.merge_shards(main, found, source.ids)
            logger.info("merged %d rows from %d shard stores in %.1fs", merged, len(found), time.perf_counter() - t0)
            index_info = main.finish(**finish_kw)
            for p in found:  # only once their rows are safely in the compacted main file
                shards.remove_store_files(p)
        except BaseException:
            try:
                _all_ok(False)  # the other ranks wait for this answer; then rank 0's own error goes up
            except Exception:  # a broken group must not hide the error that matters
                logger.debug("could not tell the other ranks that the merge failed", exc_info=True)
            raise
        seconds = time.perf_counter() - t0 + float(slowest.item())
        _all_ok(True)  # the job is done: every rank may now leave the group
    finally:
        if main is not None:
            main.close()
    return _summary(store, ckpt, device, source, main.written, already, all_skipped, seconds,
                    int(index_info["rows"]), index_info)


def _all_ok(ok: bool) -> bool:
    """A barrier that carries news: True on every rank only if every rank passed True."""
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=shards.collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _check_same_records(ids: list[str], rank: int) -> None:
    """Every rank must read the same record list in the same order, or the shards would overlap or
    leave gaps (e.g. nodes that see different copies of the data folder)."""
    import hashlib

    import torch.distributed as dist

    digest = int.from_bytes(hashlib.sha256("\n".join(ids).encode()).digest()[:7], "big")
    lo = torch.tensor([digest], dtype=torch.int64, device=shards.collective_device())
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if int(lo.item()) != int(hi.item()):
        raise DataError(f"rank {rank} reads {len(ids)} records but another rank reads a different list; "
                        "every rank (and node) must see the same data folder, unchanged during the run")


def _gather_skips(skipped: Skips) -> Skips:
    """Sum the per-rank skip counts (reason -> n) over ranks, and join their named ids; they travel
    as JSON bytes in tensors."""
    import json

    import torch.distributed as dist

    dev = shards.collective_device()
    raw = torch.tensor(list(json.dumps(skipped, sort_keys=True).encode()), dtype=torch.uint8, device=dev)
    size = torch.tensor([raw.numel()], dtype=torch.int64, device=dev)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    padded = torch.zeros(int(size.item()), dtype=torch.uint8, device=dev)
    padded[:raw.numel()] = raw
    out = [torch.zeros_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(out, padded)
    total: Skips = ({}, {})
    for t in out:
        merge_skips(*total, *json.loads(bytes(t.cpu().tolist()).rstrip(b"\0").decode()))
    return dict(sorted(total[0].items())), dict(sorted(total[1].items()))

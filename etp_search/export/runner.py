"""Run the export: stream batches through the model into the store, then build its indexes."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

import etp_search
from etp_search.errors import DataError, EtpError
from etp_search.export.mapper import EtpMapper
from etp_search.export.source import open_source
from etp_search.export.writer import StoreWriter
from etp_search.models import checkpoint_fingerprint, load_checkpoint
from etp_search.models.config import EtpConfig
from etp_search.models.resolve import config_of, pick_device, resolve_checkpoint
from indexing.index_files import IndexBuilder
from etp_search.preprocess import get_preset

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class IndexInfo:
    """One FAISS index as ``index`` left it."""

    factory: str | None
    n_rows: int | None
    recall_at_10: float | None
    nprobe: int | None
    on_gpu: bool | None


@dataclass(frozen=True)
class IndexSummary:
    """What one ``index`` run did. ``summary["written"]`` works too (read-only mapping access)."""

    store: str
    checkpoint: str
    device: str
    format: str
    records_found: int
    written: int
    already_stored: int
    skipped: dict[str, int]
    seconds: float
    records_per_s: float | None
    rows: int
    ecg_index: IndexInfo | None = None
    text_index: IndexInfo | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: v for k, v in out.items() if not (k.endswith("_index") and v is None)}

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__ or (key.endswith("_index") and getattr(self, key) is None):
            raise KeyError(key)
        value = getattr(self, key)
        return asdict(value) if isinstance(value, IndexInfo) else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.as_dict()


def index_data(
    data: str | Path | list[str | Path],
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
    build_index: bool = True,
    builder: IndexBuilder | None = None,
    progress: bool = True,
) -> IndexSummary:
    """Embed every record of ``data`` (dataset folder or signal cache) into ``store`` and index it.

    Resumable: records already in the store are skipped, so an interrupted run continues where it
    stopped, and indexing the same folder twice adds nothing.

    ``factory`` is the FAISS index-factory string ("auto", "Flat", "IVF1024,Flat", ...); ``builder``
    replaces how a new index is made (``indexing.index_files.IndexBuilder``), e.g. a streaming one.

    Returns:
        IndexSummary: records found, written now, skipped by reason, total rows, seconds, rec/s, indexes.
    """
    data = Path(data) if isinstance(data, (str, Path)) else [Path(d) for d in data]  # several folders: one source
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
    source = open_source(data, preset, text_source=text_source, sampling_rate=sampling_rate,
                         batch_size=batch_size, workers=workers)
    if source.total == 0:
        raise DataError(f"{data} holds no readable {source.format_name} records; check the folder (`etp-search info {data}`)")
    if factory != "auto":
        from indexing.faiss_index import check_factory

        check_factory(factory, cfg0.embed_dim)
    ckpt = resolve_checkpoint(checkpoint, store_path=store)
    model = load_checkpoint(ckpt, device=device, load_text=True)
    cfg = model.cfg
    writer = StoreWriter(store, cfg.embed_dim, provenance_for(ckpt, cfg, data, source.format_name, text_source),
                         rebuild=rebuild)
    try:
        todo = source.todo(writer.done_ids)
        mapper = EtpMapper(model, device)
        skipped: dict[str, int] = {}
        t0 = time.perf_counter()
        logger.info("%s; %d to embed, %d already in %s", source.summary_line, len(todo),
                    source.total - len(todo), store)
        with tqdm(total=len(todo), unit="rec", desc="index", disable=not progress or not todo, dynamic_ncols=True) as bar:
            for batch in source.batches(todo):
                for reason, n in batch.skipped.items():
                    skipped[reason] = skipped.get(reason, 0) + n
                if batch.ids:
                    writer.write(batch, mapper.ecg(batch.signals), mapper.texts(batch.texts))
                bar.update(len(batch.ids) + sum(batch.skipped.values()))
        seconds = time.perf_counter() - t0
        index_info = writer.finish(build_index=build_index, factory=factory, rebuild_index=rebuild_index,
                                   builder=builder, max_index_memory=max_index_memory)
    finally:
        writer.close()
    return IndexSummary(
        store=str(store), checkpoint=str(ckpt), device=device, format=source.format_name,
        records_found=source.total, written=writer.written, already_stored=source.total - len(todo),
        skipped=skipped, seconds=round(seconds, 2),
        records_per_s=round(writer.written / seconds, 1) if seconds > 0 and writer.written else None,
        rows=int(index_info["rows"]),
        **{k: IndexInfo(**index_info[k]) for k in ("ecg_index", "text_index") if k in index_info})

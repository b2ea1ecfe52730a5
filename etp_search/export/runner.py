"""Run the export: resolve the checkpoint, stream batches through the model into the store."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import etp_search
from etp_search.errors import DataError, EtpError, ModelError
from etp_search.export.mapper import EtpMapper
from etp_search.export.source import open_source
from etp_search.export.writer import StoreWriter
from etp_search.models import EtpModel, checkpoint_fingerprint, default_checkpoint, load_checkpoint, read_checkpoint_config
from etp_search.models.checkpoint import save_checkpoint
from etp_search.models.config import EtpConfig
from etp_search.models.device import resolve_device
from etp_search.preprocess import get_preset

logger = logging.getLogger(__name__)

RANDOM = "random"


def pick_device(device: str | None = None) -> str:
    """"auto"/None -> cuda when torch sees a GPU, else cpu; anything else is checked (one shared rule)."""
    return resolve_device(device)


def resolve_checkpoint(checkpoint: str | Path | None, store_path: str | Path | None = None, seed: int = 0) -> Path:
    """The checkpoint folder to use.

    None means the starter checkpoint shipped with the package. ``"random"`` materialises a randomly
    initialised model of the starter's architecture (the baseline every results table compares
    with) into ``STORE.random-init/`` so stores made with it carry a real, loadable provenance.
    """
    if checkpoint is None or str(checkpoint) == "":
        path = default_checkpoint()
        if not (path / "config.json").exists():
            raise ModelError(f"no starter checkpoint at {path}; pass --checkpoint RUN_DIR/best from `etp-search train`")
        return path
    if str(checkpoint) == RANDOM:
        base = default_checkpoint()
        cfg = EtpConfig.from_dict(read_checkpoint_config(base)["model"]) if (base / "config.json").exists() else EtpConfig()
        out = Path(str(store_path or "etp-data/store.h5") + ".random-init")
        if not (out / "config.json").exists():
            torch.manual_seed(seed)
            save_checkpoint(EtpModel(cfg, load_text=False), out, extra={"note": f"random initialisation, seed {seed}"})
            logger.info("random-init baseline checkpoint written to %s", out)
        return out
    path = Path(checkpoint)
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist; pass a folder with config.json + model.safetensors")
    return path


def _config_of(checkpoint: str | Path | None) -> EtpConfig:
    """The model config a checkpoint argument stands for, without loading weights or writing files."""
    if checkpoint is not None and str(checkpoint) == RANDOM:
        base = default_checkpoint()
        return EtpConfig.from_dict(read_checkpoint_config(base)["model"]) if (base / "config.json").exists() else EtpConfig()
    return EtpConfig.from_dict(read_checkpoint_config(resolve_checkpoint(checkpoint))["model"])


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
    build_index: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every record of ``data`` (dataset folder or signal cache) into ``store`` and index it.

    Resumable: records already in the store are skipped, so an interrupted run continues where it
    stopped, and indexing the same folder twice adds nothing.

    Returns:
        Summary: records found, written now, skipped by reason, total rows, seconds, rec/s, index info.
    """
    data = Path(data) if isinstance(data, (str, Path)) else [Path(d) for d in data]  # several folders: one source
    store = Path(store)
    device = pick_device(device)
    if store.is_dir():
        raise EtpError(f"--store {store} is a folder; pass a file path such as {store / 'store.h5'}")
    # Cheap checks first (the dataset, the factory), so a mistake costs nothing and leaves no files.
    cfg0 = _config_of(checkpoint)
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
    ckpt = resolve_checkpoint(checkpoint, store)
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
        index_info = writer.finish(build_index=build_index, factory=factory, rebuild_index=rebuild_index)
    finally:
        writer.close()
    return {
        "store": str(store), "checkpoint": str(ckpt), "device": device, "format": source.format_name,
        "records_found": source.total, "written": writer.written, "already_stored": source.total - len(todo),
        "skipped": skipped, "seconds": round(seconds, 2),
        "records_per_s": round(writer.written / seconds, 1) if seconds > 0 and writer.written else None,
        **index_info,
    }

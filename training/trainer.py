"""The generic training loop: optimisation, schedule, AMP, DDP, validation, checkpoints, resumption.

The loop knows nothing about ECGs or reports beyond building batches; the objective is the task
object (``training.task.ClipTask``), which returns a loss dict. The run's settings are
``training.config`` (``TrainConfig``, ``check_config``; re-exported here); the resume state is
``training.state``; best/ and last/ are swapped in whole by ``indexing._io.replace_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from etp_search.errors import DataError, EtpError
from etp_search.models import EtpModel, save_checkpoint
from etp_search.signal_cache import SignalCache
from indexing._crash import crash_point
from indexing._io import atomic_write_bytes, repair_dir, replace_dir
from training.augment import augment, step_generator
from training.config import CONFIG_FILE, TEXT_SAMPLING, TrainConfig, check_config  # noqa: F401 - re-exported
from training.data import EpochBatches, PairSplit, StatementTable, split_indices, subsample_rows
from training.distributed import DistEnv, all_reduce_mean, barrier, init_distributed
from training.loss import ClipLoss
from training.state import EpochRecord, TrainProgress, has_state, load_state, save_state
from training.task import ClipTask
from training.text_cache import TextFeatureCache
from training.validate import check_select, resolve_val_task, validate

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay, evaluated per OPTIMIZER STEP (not per epoch)."""
    warm = max(1, int(round(cfg.warmup_fraction * total)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay for biases, norm weights (1-D) and the logit scale (open_clip's exclusion rule)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _amp_setup(cfg: TrainConfig, device: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    if cfg.amp not in {"auto", "bf16", "fp16", "off"}:
        raise EtpError(f"unknown --amp {cfg.amp!r}; choose auto, bf16, fp16 or off")
    if not device.startswith("cuda") or cfg.amp == "off":
        return None, False  # CPU autocast is slower than fp32 on most CPUs
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _better(select: str, value: float | None, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if select == "val_loss" else value > best


class Trainer:
    """One training run (fresh or resumed). ``run()`` returns the final ``TrainProgress``.

    Args:
        cfg: The run's config.
        resume: Continue the run saved in cfg.out.
        progress: Show tqdm bars.

    Crash tests use ``indexing._crash.crash_at("after-step", nth)``: the point comes right after an
    optimizer step, before any save, like a kill at an arbitrary moment.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        self.show_progress = progress
        self.run_dir = Path(cfg.out)

    # -- set-up -------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        check_config(cfg)
        self.env: DistEnv = init_distributed(cfg.device)
        self.device = self.env.device
        self.cache = SignalCache.open(cfg.cache)
        try:
            texts = self.cache.texts(cfg.text_source)
        except EtpError:
            raise DataError(
                f"the cache {cfg.cache} has no text source {cfg.text_source!r}; it has "
                f"{', '.join(self.cache.text_sources)} — pass one of them as --text-source"
            ) from None
        train_rows, val_rows = split_indices(self.cache, cfg.train_folds, cfg.val_folds)
        train_rows = subsample_rows(train_rows, cfg.train_fraction, cfg.seed)
        self.train = PairSplit.load(self.cache, train_rows, texts)
        self.val = PairSplit.load(self.cache, val_rows, texts)
        labels = self.cache.labels()
        self.statements: StatementTable | None = None
        if cfg.targets != "hard" or cfg.text_sampling != "report":
            self.statements = StatementTable.build(self.train.texts, [labels[r] for r in train_rows],
                                                   cfg.text_source, hierarchy=cfg.statement_hierarchy)
        self.val_labels = [labels[r] for r in val_rows]
        self.val_task = resolve_val_task(cfg.val_task, self.cache.attrs.get("format"))
        check_select(cfg.select, self.val_task)
        # Checked before the text features are written, so a refused run leaves RUN_DIR untouched.
        self.batches = EpochBatches(len(self.train), cfg.batch_size, self.env.world_size, self.env.rank, cfg.seed)
        if self.env.is_main:
            log.info("%d training / %d validation pairs (%d / %d unique reports) from %s",
                     len(self.train), len(self.val), len(set(self.train.texts)), len(set(self.val.texts)), cfg.cache)

        _seed_all(cfg.seed)
        self.model = EtpModel(cfg.model_config(self.cache.preset.name)).to(self.device)
        self.frozen_text = self.model.cfg.text.frozen
        if self.frozen_text:
            self._text_features()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        self.autocast_dtype, use_scaler = _amp_setup(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
        self.total_steps = cfg.epochs * len(self.batches)
        self.ddp_model: nn.Module = self.model
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.env.local_rank] if self.device.startswith("cuda") else None
            self.ddp_model = DDP(self.model, device_ids=ids)
        # gather_with_grad + local loss: DDP gradients equal the single-process global-batch gradient.
        self.task = ClipTask(self.ddp_model, ClipLoss(local_loss=True, gather_with_grad=True, targets=cfg.targets))

    def _text_features(self) -> None:
        """Frozen tower: features of the unique report texts, from RUN_DIR's cache or computed once."""
        enc = self.model.text
        vocab = self.statements.vocab if self.statements is not None else []
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tc = TextFeatureCache(self.run_dir, enc)
            tc.ensure(self.train.texts + self.val.texts + vocab)
        barrier()
        if not self.env.is_main:
            tc = TextFeatureCache(self.run_dir, enc)
            tc.ensure(self.train.texts + self.val.texts + vocab, write=False)
        self.text_cache = tc
        self.train_feats = tc.lookup(self.train.texts)
        self.val_feats = tc.lookup(self.val.texts)
        # Statement vectors live in the same cache: sampling a statement never reruns the tower.
        self.statement_feats = tc.lookup(vocab) if vocab else None

    # -- files ---------------------------------------------------------------------------------

    def _write_config(self) -> None:
        atomic_write_bytes(self.run_dir / CONFIG_FILE, (json.dumps(self.cfg.to_dict(), indent=2) + "\n").encode())

    def _write_metrics(self, history: list[EpochRecord]) -> None:
        # Rewritten whole from the saved history, so a resumed run never duplicates or loses lines.
        body = "".join(json.dumps(h) + "\n" for h in history)
        atomic_write_bytes(self.run_dir / METRICS_FILE, body.encode())

    def _save_model(self, name: str, extra: dict[str, Any]) -> None:
        tmp = self.run_dir / f"{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_checkpoint(self.model, tmp, extra=extra, dtype=self.cfg.weights_dtype)
        replace_dir(tmp, self.run_dir / name)

    # -- loop ----------------------------------------------------------------------------------

    def _sampled_statements(self, idx: list[int], step: int) -> list[int]:
        """Per record of the batch: -1 (its report) or the vocab id of the statement it shows this step.

        Seeded by (seed, step, rank), so a resumed run draws the same statements.
        """
        cfg = self.cfg
        if cfg.text_sampling == "report" or self.statements is None:
            return [-1] * len(idx)
        rng = np.random.default_rng([cfg.seed, step, self.env.rank, 31])
        out = []
        for i in idx:
            ids = self.statements.ids[i]
            pick = int(ids[rng.integers(len(ids))])
            use = cfg.text_sampling == "statement" or rng.random() < cfg.statement_prob
            out.append(pick if use else -1)
        return out

    def _batch(self, idx: list[int], step: int) -> dict[str, Any]:
        x = self.train.batch(idx)
        x = augment(x, self.cfg.augment, step_generator(self.cfg.seed, step, self.env.rank))
        batch: dict[str, Any] = {"ecg": x.to(self.device, non_blocking=True)}
        chosen = self._sampled_statements(idx, step)
        if self.frozen_text:
            feats = self.train_feats[torch.as_tensor(idx)].clone()
            for k, sid in enumerate(chosen):
                if sid >= 0:
                    assert self.statement_feats is not None  # a statement is drawn only from a non-empty vocabulary
                    feats[k] = self.statement_feats[sid]
            batch["text_feats"] = feats.to(self.device)
        else:
            vocab = self.statements.vocab if self.statements is not None else []  # no table: every sid is -1
            batch["texts"] = [self.train.texts[i] if sid < 0 else vocab[sid] for i, sid in zip(idx, chosen)]
        if self.statements is not None and self.cfg.targets != "hard":
            ecg_sets = self.statements.report_sets[torch.as_tensor(idx)]
            text_sets = ecg_sets.clone()
            for k, sid in enumerate(chosen):
                if sid >= 0:
                    text_sets[k] = False
                    text_sets[k, sid] = True
            batch["ecg_sets"] = ecg_sets.to(self.device)
            batch["text_sets"] = text_sets.to(self.device)
        return batch

    def _optimizer_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(step, self.total_steps, self.cfg)
        self.ddp_model.train()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            losses = self.task(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or use --amp off")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip) if self.cfg.grad_clip > 0 else torch.tensor(0.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, math.log(self.model.cfg.max_logit_scale))
        return {"loss": float(loss.detach()), "grad_norm": float(gnorm), "logit_scale": float(losses["logit_scale"])}

    def _validate(self) -> dict[str, float]:
        if self.frozen_text:
            feats = self.val_feats
        else:
            self.model.eval()
            with torch.no_grad():
                feats = torch.cat([self.model.text_features(self.val.texts[i : i + 128]) for i in range(0, len(self.val), 128)])
        return validate(self.model, self.val.batch, self.val.texts, feats, self.val_labels, self.val_task, device=self.device)

    def run(self) -> TrainProgress:
        """Train to the end (or resume and train to the end); returns the last progress."""
        from tqdm.auto import tqdm

        self._setup()
        cfg, env = self.cfg, self.env
        progress = TrainProgress()
        if self.resume:
            if env.is_main:
                for name in ("best", "last"):
                    repair_dir(self.run_dir / name)
            if has_state(self.run_dir):
                progress = load_state(self.run_dir, self.model, self.optimizer, self.scaler)
                if env.is_main:
                    log.info("resuming %s at epoch %d, batch %d (step %d)", self.run_dir, progress.epoch + 1, progress.batch, progress.step)
            elif env.is_main:
                log.info("no resume state in %s yet; starting from the beginning", self.run_dir)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        for epoch in range(progress.epoch, cfg.epochs):
            bar = tqdm(total=len(self.batches) * cfg.batch_size, initial=progress.batch * cfg.batch_size,
                       unit="ecg", unit_scale=False, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (self.show_progress and env.is_main), dynamic_ncols=True)
            t_epoch = time.perf_counter()
            for idx in self.batches.epoch(epoch, skip=progress.batch):
                t0 = time.perf_counter()
                stats = self._optimizer_step(self._batch(idx, progress.step), progress.step)
                progress.train_seconds += time.perf_counter() - t0
                progress.step += 1
                progress.batch += 1
                progress.epoch_loss_sum += stats["loss"]
                progress.epoch_loss_n += 1
                bar.update(cfg.batch_size)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", scale=f"{stats['logit_scale']:.1f}")
                crash_point("after-step")
                if cfg.save_every_steps and progress.step % cfg.save_every_steps == 0 and progress.batch < len(self.batches):
                    if env.is_main:
                        save_state(self.run_dir, self.model, self.optimizer, progress, self.scaler)
                    barrier()
            bar.close()
            record = self._end_epoch(epoch, progress, time.perf_counter() - t_epoch)
            if env.is_main:
                log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)))
        return progress

    def _end_epoch(self, epoch: int, progress: TrainProgress, seconds: float) -> EpochRecord:
        cfg, env = self.cfg, self.env
        train_loss = all_reduce_mean(progress.epoch_loss_sum / max(1, progress.epoch_loss_n), "cpu")
        record: EpochRecord = {"epoch": epoch + 1, "step": progress.step, "train_loss": train_loss,
                               "lr": self.optimizer.param_groups[0]["lr"], "logit_scale": float(self.model.scale().detach())}
        if env.is_main:
            record.update(self._validate())
            record["train_samples_per_s"] = (progress.step * cfg.batch_size) / max(1e-9, progress.train_seconds)
            value = record.get(cfg.select)
            improved = _better(cfg.select, value, progress.best)
            if improved:
                progress.best, progress.best_epoch = value, epoch + 1
            elif progress.best is None:
                # No finite figure yet (e.g. too few labelled validation records for an AUC): best/
                # follows the latest model until one appears, so a finished run always has best/.
                log.warning("epoch %d: %s is %s; best/ keeps the latest model until it has a value", epoch + 1, cfg.select, value)
                improved, progress.best_epoch = True, epoch + 1
            record["best_epoch"] = progress.best_epoch
            progress.history.append(record)
            extra = {"epoch": epoch + 1, "step": progress.step, "metrics": record, "select": cfg.select,
                     "train_config": cfg.to_dict()}
            if improved:
                self._save_model("best", extra)
            self._save_model("last", extra)
        progress.epoch, progress.batch, progress.epoch_loss_sum, progress.epoch_loss_n = epoch + 1, 0, 0.0, 0
        if env.is_main:
            save_state(self.run_dir, self.model, self.optimizer, progress, self.scaler)
            self._write_metrics(progress.history)
        barrier()
        return record

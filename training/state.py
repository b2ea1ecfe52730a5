"""Resumable training state: model, optimizer, AMP scaler, RNGs and position, as safetensors + JSON.

Layout in RUN_DIR/resume/: ``state-<step>.safetensors`` (every tensor) and ``state-<step>.json``
(everything else), then ``latest.json`` naming them, written last and atomically: a run killed at
any moment leaves either the previous complete state or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from etp_search.errors import EtpError, ModelError
from etp_search.models.checkpoint import atomic_save_tensors, atomic_write_bytes

log = logging.getLogger(__name__)

EpochRecord = dict[str, Any]
"""One line of metrics.jsonl: epoch, step, train_loss, lr, logit_scale, the validation figures,
train_samples_per_s and best_epoch (a plain dict: the validation keys depend on the task)."""


@dataclass
class TrainProgress:
    """Where a run stands: position, best-so-far and the per-epoch history.

    Saved in the resume state as the JSON object ``to_dict()`` gives (the same keys as ever), and
    returned by ``Trainer.run()``; ``history`` is what metrics.jsonl holds, a record a line.
    """

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps done in all
    history: list[EpochRecord] = field(default_factory=list)
    best: float | None = None  # best value of cfg.select so far
    best_epoch: int | None = None  # 1-based epoch that best/ holds
    epoch_loss_sum: float = 0.0
    epoch_loss_n: int = 0
    train_seconds: float = 0.0  # time in optimizer steps, for train_samples_per_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainProgress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def best_record(self) -> EpochRecord:
        """The history record of best_epoch (the last one if none is marked; {} before any epoch)."""
        return next((h for h in self.history if h["epoch"] == self.best_epoch), self.history[-1] if self.history else {})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global RandomState is MT19937: the legacy 5-tuple, never the dict
    py_state = random.getstate()
    doc = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, doc


def _set_rng_state(tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = doc["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = doc["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, st in doc["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": doc["param_groups"]}


def save_state(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: TrainProgress,
    scaler: torch.amp.GradScaler | None = None,
    keep: int = 1,
) -> Path:
    """Write the complete training state for step ``progress.step`` and point latest.json at it."""
    d = Path(run_dir) / "resume"
    step = int(progress.step)
    name = f"state-{step:08d}"
    model = getattr(model, "module", model)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_doc = _optimizer_split(optimizer)
    rng_t, rng_doc = _rng_state()
    tensors.update(opt_t)
    tensors.update(rng_t)
    atomic_save_tensors(tensors, d / f"{name}.safetensors")
    doc = {
        "progress": progress.to_dict(),
        "optimizer": opt_doc,
        "rng": rng_doc,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    atomic_write_bytes(d / f"{name}.json", json.dumps(doc).encode())
    atomic_write_bytes(d / "latest.json", json.dumps({"name": name, "step": step}).encode())
    # Older states go only after latest.json points at the new one.
    olds = sorted(p for p in d.glob("state-*.safetensors") if p.stem != name)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
    return d / name


def has_state(run_dir: Path) -> bool:
    return (Path(run_dir) / "resume" / "latest.json").is_file()


def check_new_run_dir(out: Path) -> None:
    """A new run's folder must be new or empty (our own text feature files from an unstarted attempt aside)."""
    from training.config import CONFIG_FILE

    if (out / CONFIG_FILE).exists() or has_state(out):
        raise EtpError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if out.exists() and not out.is_dir():
        raise EtpError(f"--out {out} is a file; pass a new or empty folder")
    if out.is_dir():
        # text_features-* are written by an attempt stopped before its first step: reusable, not the user's.
        foreign = sorted(p.name for p in out.iterdir() if not p.name.lstrip(".").startswith("text_features-"))
        if foreign:
            raise EtpError(
                f"--out {out} is not empty and holds no training run (it has {len(foreign)} entries, e.g. "
                f"{foreign[0]!r}); pass a new or empty folder"
            )


def interrupted_line(run_dir: Path) -> str:
    """The one line a Ctrl-C during training prints: where the state is and how to continue."""
    from training.config import CONFIG_FILE

    if has_state(run_dir):
        return f"interrupted: the last saved state is in {run_dir / 'resume'}; continue with `etp-search train --resume {run_dir}`"
    if (run_dir / CONFIG_FILE).is_file():
        return f"interrupted before the first saved state; `etp-search train --resume {run_dir}` starts the run from the beginning"
    return "interrupted before training started; nothing was saved — run the same command again"


def load_state(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> TrainProgress:
    """Restore what ``save_state`` wrote; returns the saved progress."""
    d = Path(run_dir) / "resume"
    try:
        name = json.loads((d / "latest.json").read_text())["name"]
        tensors = load_file(str(d / f"{name}.safetensors"))
        doc = json.loads((d / f"{name}.json").read_text())
    except Exception as exc:  # noqa: BLE001 - OSError, bad JSON, SafetensorError of a damaged file
        raise ModelError(f"cannot read the resume state in {d} ({exc}); start a new run with another --out") from None
    model = getattr(model, "module", model)
    own = model.state_dict()
    msd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if set(msd) != set(own) or any(msd[k].shape != own[k].shape for k in own):
        raise ModelError(f"the resume state in {d} belongs to another model architecture; start a new run")
    model.load_state_dict(msd, strict=True)
    optimizer.load_state_dict(_optimizer_join(tensors, doc["optimizer"]))
    if scaler is not None and doc.get("scaler"):
        scaler.load_state_dict(doc["scaler"])
    if restore_rng:
        _set_rng_state(tensors, doc["rng"])
    return TrainProgress.from_dict(doc["progress"])

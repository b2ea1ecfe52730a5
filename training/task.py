"""The contrastive task: wraps model + loss and returns a loss dict (open_clip's task habit)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.loss import ClipLoss


class ClipTask(nn.Module):
    """model(batch) -> {"loss": total, "contrastive_loss": ..., "logit_scale": ...}.

    The loop only needs ``task(batch)["loss"]``; another objective (e.g. an added captioning or
    label loss) is a new task, not a new loop.

    Args:
        model: EtpModel, possibly wrapped in DistributedDataParallel (its forward is what DDP hooks).
        loss: The contrastive loss module.
    """

    def __init__(self, model: nn.Module, loss: ClipLoss | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss or ClipLoss()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(batch["ecg"], text_feats=batch.get("text_feats"), texts=batch.get("texts"))
        losses = self.loss(out["ecg"], out["text"], out["logit_scale"],
                           ecg_sets=batch.get("ecg_sets"), text_sets=batch.get("text_sets"))
        total = sum(losses.values())
        return {"loss": total, **losses, "logit_scale": out["logit_scale"].detach()}

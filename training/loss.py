"""Symmetric CLIP InfoNCE loss whose negatives come from the global (all-rank) batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(
    ecg: torch.Tensor, text: torch.Tensor, gather_with_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate both embedding batches over all ranks (rank order), like open_clip's gather_features.

    Args:
        gather_with_grad: True: a differentiable all_gather (torch.distributed.nn), so each rank's
            loss also sends gradients to the other ranks' embeddings — with DDP averaging this gives
            exactly the single-process gradient of the global-batch loss. False: plain all_gather
            with the local shard put back in its slot, so gradients flow only through the local
            shard (open_clip's default; cheaper, but the gradient is the global one / world_size).
    """
    if not _dist_ready():
        return ecg, text
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(ecg), 0), torch.cat(all_gather(text), 0)
    rank, world = dist.get_rank(), dist.get_world_size()
    ecgs = [torch.zeros_like(ecg) for _ in range(world)]
    texts = [torch.zeros_like(text) for _ in range(world)]
    dist.all_gather(ecgs, ecg.contiguous())
    dist.all_gather(texts, text.contiguous())
    ecgs[rank], texts[rank] = ecg, text  # keep the autograd path through the local shard
    return torch.cat(ecgs, 0), torch.cat(texts, 0)


class ClipLoss(nn.Module):
    """0.5 * (CE(ecg->text) + CE(text->ecg)) over cosine logits scaled by exp(logit_scale).

    Args:
        local_loss: Each rank scores only its own rows against all gathered columns (memory
            O(B x N) instead of O(N x N)); with ``gather_with_grad`` still the exact global gradient.
        gather_with_grad: See ``gather_features``.
        gather: Gather across ranks at all; False for a per-process loss (validation on rank 0 alone
            must not wait for a collective the other ranks never join).
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather
        if local_loss and not gather_with_grad:
            raise ValueError("local_loss needs gather_with_grad, else the cross-rank gradient terms are lost")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def logits(
        self, ecg: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled logits per ECG and per text, and the index of each row's positive column."""
        distributed = self.gather and _dist_ready()
        all_ecg, all_text = gather_features(ecg, text, self.gather_with_grad) if distributed else (ecg, text)
        if self.local_loss and distributed:
            offset = dist.get_rank() * ecg.shape[0]
            per_ecg = logit_scale * ecg @ all_text.T
            per_text = logit_scale * text @ all_ecg.T
        else:
            offset = 0
            per_ecg = logit_scale * all_ecg @ all_text.T
            per_text = per_ecg.T
        labels = torch.arange(per_ecg.shape[0], device=ecg.device) + offset
        return per_ecg, per_text, labels

    def forward(self, ecg: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss dict {"contrastive_loss": scalar}; inputs are L2-normalised (B, D) embeddings of pairs.

        Pairs sharing one report (PTB-XL: thousands of "sinus rhythm. normal ECG") need no special
        targets: a deterministic text tower maps them to identical columns, and cross-entropy with
        hard labels over identical columns equals the soft-target loss that treats them as positives.
        """
        per_ecg, per_text, labels = self.logits(ecg.float(), text.float(), logit_scale.float())
        loss = 0.5 * (F.cross_entropy(per_ecg, labels) + F.cross_entropy(per_text, labels))
        return {"contrastive_loss": loss}

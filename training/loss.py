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


TARGETS = ("hard", "identity", "subset", "jaccard")


def _gather_plain(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of a tensor that needs no gradient (statement sets), in rank order."""
    if not _dist_ready():
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def match_matrix(ecg_sets: torch.Tensor, text_sets: torch.Tensor, targets: str) -> torch.Tensor:
    """(N_ecg, N_text) non-negative weights: how far text j is a positive of ECG i.

    Args:
        ecg_sets: (N, V) multi-hot statement set of each ECG's record.
        text_sets: (N, V) multi-hot statement set of each text in the batch (the record's whole set
            for a report, one statement for a sampled statement).
        targets: "identity": 1 where text j says exactly what text i (ECG i's own text) says;
            "subset": 1 where every statement of text j holds for ECG i; "jaccard": the Jaccard
            overlap of text j's statements with ECG i's statements.

    Row i always has weight on column i (its own text) when the sets are consistent.
    """
    r, t = ecg_sets.float(), text_sets.float()
    nt = t.sum(1)
    if targets == "identity":
        inter = t @ t.T
        return ((inter == nt[:, None]) & (inter == nt[None, :])).float()
    inter = r @ t.T
    if targets == "subset":
        return ((inter == nt[None, :]) & (nt[None, :] > 0)).float()
    if targets == "jaccard":
        union = r.sum(1)[:, None] + nt[None, :] - inter
        return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
    raise ValueError(f"unknown targets {targets!r}; choose {', '.join(TARGETS)}")


def soft_targets(match: torch.Tensor) -> torch.Tensor:
    """Rows of ``match`` scaled to sum to 1; a row without any weight keeps its diagonal (hard label)."""
    eye = torch.eye(match.shape[0], match.shape[1], dtype=match.dtype, device=match.device)
    m = torch.where(match.sum(1, keepdim=True) > 0, match, eye)
    return m / m.sum(1, keepdim=True)


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class ClipLoss(nn.Module):
    """0.5 * (CE(ecg->text) + CE(text->ecg)) over cosine logits scaled by exp(logit_scale).

    Args:
        local_loss: Each rank scores only its own rows against all gathered columns (memory
            O(B x N) instead of O(N x N)); with ``gather_with_grad`` still the exact global gradient.
        gather_with_grad: See ``gather_features``.
        gather: Gather across ranks at all; False for a per-process loss (validation on rank 0 alone
            must not wait for a collective the other ranks never join).
        targets: "hard": each ECG's only positive is its own text (classic CLIP). "identity",
            "subset" or "jaccard": multi-positive soft targets over the GLOBAL batch from the
            statement sets passed to ``forward`` (see ``match_matrix``); each direction's row is
            normalised to sum to 1.
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True, gather: bool = True,
                 targets: str = "hard") -> None:
        super().__init__()
        self.gather = gather
        if local_loss and not gather_with_grad:
            raise ValueError("local_loss needs gather_with_grad, else the cross-rank gradient terms are lost")
        if targets not in TARGETS:
            raise ValueError(f"unknown targets {targets!r}; choose {', '.join(TARGETS)}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.targets = targets

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

    def forward(self, ecg: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                ecg_sets: torch.Tensor | None = None, text_sets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss dict {"contrastive_loss": scalar}; inputs are L2-normalised (B, D) embeddings of pairs.

        Pairs sharing one report need no special targets: a deterministic text tower maps them to
        identical rows/columns, and hard-label cross-entropy over them sums to the "identity"
        soft-target loss. What hard targets cannot express is OVERLAP: "sinus rhythm, normal ECG"
        is a partial positive of an ECG whose report is "sinus rhythm, LVH", and a sampled statement
        ("atrial fibrillation") is a full positive of every AFIB ECG in the batch whatever text its
        own record showed; "subset" and "jaccard" targets give those pairs weight.

        Args:
            ecg_sets, text_sets: (B, V) multi-hot statement sets of this rank's pairs; needed unless
                targets is "hard".
        """
        per_ecg, per_text, labels = self.logits(ecg.float(), text.float(), logit_scale.float())
        if self.targets == "hard":
            loss = 0.5 * (F.cross_entropy(per_ecg, labels) + F.cross_entropy(per_text, labels))
            return {"contrastive_loss": loss}
        if ecg_sets is None or text_sets is None:
            raise ValueError(f"targets {self.targets!r} need the statement sets of the batch")
        distributed = self.gather and _dist_ready()
        all_r = _gather_plain(ecg_sets.float()) if distributed else ecg_sets.float()
        all_t = _gather_plain(text_sets.float()) if distributed else text_sets.float()
        match = match_matrix(all_r, all_t, self.targets).to(per_ecg.device)
        rows = slice(int(labels[0]), int(labels[0]) + per_ecg.shape[0])
        target_e = soft_targets(match)[rows]
        target_t = soft_targets(match.T)[rows]
        loss = 0.5 * (_soft_ce(per_ecg, target_e) + _soft_ce(per_text, target_t))
        return {"contrastive_loss": loss}

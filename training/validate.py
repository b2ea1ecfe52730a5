"""Per-epoch validation: contrastive loss, zero-shot macro AUC and ECG->report recall@k on the validation fold."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

from etp_search.errors import EtpError
from etp_search.evaluation.metrics import macro_auc
from etp_search.evaluation.retrieval import recall_at_k
from etp_search.labels import Task, get_task
from etp_search.models.etp import EtpModel
from training.loss import ClipLoss

log = logging.getLogger(__name__)

#: Zero-shot task used for validation per dataset layout (PTB-XL: superdiagnostic, as in ETP/MERL).
AUTO_TASKS = {"ptbxl": "superdiagnostic", "cpsc2018": "cpsc2018", "cinc": "cpsc2018"}


def resolve_val_task(name: str, fmt: str | None) -> Task | None:
    """The zero-shot validation task: a task name, "none", or "auto" (chosen by dataset layout)."""
    if name == "none":
        return None
    if name == "auto":
        # A multi-source cache is named "ptbxl+npy-ptbxl": a task every part agrees on is used.
        parts = {AUTO_TASKS.get(p.removeprefix("npy-"), "") for p in (fmt or "").split("+")}
        name = parts.pop() if len(parts) == 1 else ""
        if not name:
            return None
    return get_task(name)


#: The k of the val_recall@k figures.
RECALL_KS = (1, 5, 10)


def metric_names(task: Task | None) -> list[str]:
    """The validation figures ``validate`` reports for this zero-shot task (the names --select accepts)."""
    names = ["val_loss", *(f"val_recall@{k}" for k in RECALL_KS)]
    if task is not None:
        names.append(f"val_zeroshot_auc_{task.name}")
    return names


def check_select(select: str, task: Task | None | str = "any") -> None:
    """Refuse a --select the trainer never produces (best/ would never be written).

    Args:
        select: The figure name.
        task: The resolved validation task (or None: no zero-shot figure); "any" accepts the
            zero-shot figure of every known task (used before the data is known).
    """
    from etp_search.labels import list_tasks

    if task == "any":
        known = metric_names(None) + [f"val_zeroshot_auc_{t}" for t in list_tasks()]
    else:
        known = metric_names(task)  # type: ignore[arg-type]
    if select not in known:
        raise EtpError(f"unknown --select {select!r}; this run reports {', '.join(known)} — pass one of them")


def class_prompts(task: Task) -> dict[str, list[str]]:
    """Prompts per class: evaluation.zeroshot's default set when available, else the task's descriptions."""
    try:
        from etp_search.evaluation.zeroshot import class_prompts as shared

        return shared(task)
    except ImportError:
        return {c: [task.description[c]] for c in task.classes}


@torch.no_grad()
def embed_ecgs(model: EtpModel, batches: Callable[[Sequence[int]], torch.Tensor], n: int, device: str, batch_size: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        out.append(model.encode_ecg(batches(idx).to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.cfg.embed_dim)


@torch.no_grad()
def validate(
    model: EtpModel,
    signals: Callable[[Sequence[int]], torch.Tensor],
    texts: Sequence[str],
    text_feats: torch.Tensor,
    labels: Sequence[dict] | None,
    task: Task | None,
    device: str = "cpu",
    loss_chunk: int = 256,
) -> dict[str, float]:
    """Validation metrics of one split (the model is put in eval mode and left there).

    Args:
        model: Unwrapped EtpModel.
        signals: Callable mapping split positions to (b, 12, L) signals.
        texts: Report text per record.
        text_feats: Pooled text features per record (N, hidden).
        labels: Native label dicts per record (for zero-shot), or None.
        task: Zero-shot task, or None to skip.
        loss_chunk: The loss is the mean CLIP loss over consecutive chunks of this many records
            (in order, so it does not depend on any shuffling).
    """
    model.eval()
    n = len(texts)
    if n == 0:
        return {}
    ecg = embed_ecgs(model, signals, n, device)
    txt = model.encode_text_features(text_feats.to(device)).float().cpu()
    scale = model.scale().float().cpu()
    loss_fn = ClipLoss(gather=False)  # runs on rank 0 only
    losses, weights = [], []
    for s in range(0, n, loss_chunk):
        e, t = ecg[s : s + loss_chunk], txt[s : s + loss_chunk]
        if len(e) > 1:
            losses.append(float(loss_fn(e, t, scale)["contrastive_loss"]))
            weights.append(len(e))
    out: dict[str, float] = {"val_loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
    # ECG -> report over the gallery of unique validation reports (a hit = identical report text).
    uniq: dict[str, int] = {}
    for i, report in enumerate(texts):
        uniq.setdefault(report, i)
    gallery = txt[list(uniq.values())].numpy()
    rec = recall_at_k(ecg.numpy(), gallery, list(texts), list(uniq), ks=RECALL_KS)
    out.update({f"val_recall@{k}": v for k, v in rec.items()})
    if task is not None and labels is not None:
        y = task.matrix(labels)
        keep = y.any(axis=1)
        prompts = class_prompts(task)
        pv = []
        for c in task.classes:
            v = model.encode_text(prompts[c]).float().cpu().mean(0)
            pv.append(v / v.norm())
        scores = (ecg @ torch.stack(pv).T).numpy()
        if keep.sum() > 1:
            auc, _, _ = macro_auc(y[keep], scores[keep])
            out[f"val_zeroshot_auc_{task.name}"] = float(auc)
    return out

"""Zero-shot labelling: score = cosine(ECG vector, class embedding), metric = macro ROC-AUC.

A class embedding is the ensemble of its prompts: each prompt's text vector is L2-normalised,
the vectors are averaged and the mean renormalised (CLIP's prompt ensembling). Prompt sets
and the prompt file format live in :mod:`etp_search.evaluation.prompts`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from etp_search.evaluation.metrics import AucReport, auc_report
from etp_search.evaluation.prompts import class_prompts  # noqa: F401  (public here, per the contract)

logger = logging.getLogger(__name__)


def _normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def encode_prompts(model: Any, prompts: Mapping[str, Sequence[str]], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Encode every prompt with ``model.encode_text`` in batches: class -> (P, D) float32 vectors."""
    import torch

    flat = [(c, p) for c, ps in prompts.items() for p in ps]
    texts = [p for _, p in flat]
    vecs: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = model.encode_text(texts[start:start + batch_size], normalize=True)
            vecs.append(enc.detach().cpu().float().numpy() if hasattr(enc, "detach") else np.asarray(enc, np.float32))
    allv = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    out: dict[str, np.ndarray] = {}
    i = 0
    for c, ps in prompts.items():
        out[c] = allv[i:i + len(ps)]
        i += len(ps)
    return out


def class_embeddings(prompt_vecs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(C, D) ensembled class embeddings, in the mapping's class order."""
    rows = [_normalise(np.atleast_2d(np.asarray(v, np.float32))).mean(axis=0) for v in prompt_vecs.values()]
    return _normalise(np.stack(rows)).astype(np.float32)


def scores(ecg_vecs: np.ndarray, prompt_vecs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, C) cosine similarity of each ECG to each class embedding."""
    return _normalise(np.asarray(ecg_vecs, np.float32)) @ class_embeddings(prompt_vecs).T


def evaluate(
    ecg_vecs: np.ndarray,
    Y: np.ndarray,
    prompt_vecs: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> AucReport:
    """Zero-shot macro AUC with a bootstrap CI, per-class AUC and skipped classes.

    Args:
        ecg_vecs: (N, D) ECG vectors.
        Y: (N, C) multi-hot labels, columns in ``prompt_vecs`` order.
        prompt_vecs: class -> (P, D) prompt vectors.
    """
    classes = list(prompt_vecs)
    Y = np.asarray(Y)
    if Y.shape != (len(ecg_vecs), len(classes)):
        raise ValueError(f"labels {Y.shape} do not match {len(ecg_vecs)} ECGs x {len(classes)} classes")
    report = auc_report(Y, scores(ecg_vecs, prompt_vecs), classes, n_boot=n_boot, seed=seed)
    report.extra["n_prompts"] = {c: int(np.atleast_2d(v).shape[0]) for c, v in prompt_vecs.items()}
    return report


def assign_counts(ecg_vecs: np.ndarray, prompt_vecs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """How many ECGs each class wins (top-1 score): the labelling when no ground truth exists."""
    top = scores(ecg_vecs, prompt_vecs).argmax(axis=1)
    counts = np.bincount(top, minlength=len(prompt_vecs))
    return {c: int(n) for c, n in zip(prompt_vecs, counts)}

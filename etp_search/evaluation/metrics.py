"""Ranking metrics on plain arrays: ROC-AUC, macro AUC, bootstrap intervals, precision@k.

Everything here takes numpy arrays and is vectorised, so zero-shot, probe and training-time
validation can call it on tens of thousands of records without a Python loop per record.
Labels are binarised as ``y > 0`` (multi-hot matrices from :mod:`etp_search.labels`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata

logger = logging.getLogger(__name__)


def _binary(y: np.ndarray) -> np.ndarray:
    # NaN > 0 is False: unknown labels count as negatives rather than poisoning the ranks.
    return np.asarray(y) > 0


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC of scores ``s`` for binary labels ``y`` (Mann-Whitney U, tied scores count half).

    Returns NaN when ``y`` has no positives or no negatives.
    """
    per_class = _auc_columns(_binary(y).reshape(-1, 1), np.asarray(s, dtype=np.float64).reshape(-1, 1))
    return float(per_class[0])


def _auc_columns(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Per-column AUC from average ranks; NaN for columns without both classes."""
    ranks = rankdata(S, axis=0)  # average ranks handle ties exactly like sklearn's trapezoid
    n_pos = Y.sum(axis=0).astype(np.float64)
    n_neg = Y.shape[0] - n_pos
    rank_sum = (ranks * Y).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def macro_auc(Y: np.ndarray, S: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Macro ROC-AUC over the classes (columns) that have both positives and negatives.

    Args:
        Y: (N, C) labels, positive where > 0.
        S: (N, C) scores, higher means more likely positive.

    Returns:
        (macro AUC — NaN if no class is scorable, per-class AUC (C,) with NaN for skipped
        classes, indices of the skipped classes).
    """
    Y, S = _check_pair(Y, S)
    per_class = _auc_columns(Y, S)
    skipped = np.flatnonzero(np.isnan(per_class))
    macro = float(np.nanmean(per_class)) if len(skipped) < per_class.size else float("nan")
    return macro, per_class, skipped


def _check_pair(Y: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Y = _binary(Y)
    S = np.asarray(S, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if S.ndim == 1:
        S = S[:, None]
    if Y.shape != S.shape:
        raise ValueError(f"labels {Y.shape} and scores {S.shape} must have the same shape")
    return Y, S


def bootstrap_macro_auc(
    Y: np.ndarray, S: np.ndarray, n_boot: int = 1000, seed: int = 0, columns: np.ndarray | None = None
) -> np.ndarray:
    """Macro AUC on ``n_boot`` resamples of the records (rows), drawn with replacement.

    A resample is a vector of per-record counts, and each class's AUC is computed from the
    full data's sort order with those counts as weights: exact for the resample (duplicated
    records tie with themselves, which never pairs a positive with a negative) and one sort
    per class instead of one per resample. Classes lacking positives or negatives in a
    resample are left out of that resample's mean.

    Args:
        columns: classes to include (default: those scorable on the full data).

    Returns:
        (n_boot,) resampled macro AUCs (NaN where no class was scorable).
    """
    Y, S = _check_pair(Y, S)
    n, n_cls = Y.shape
    if columns is None:
        columns = np.flatnonzero(~np.isnan(_auc_columns(Y, S)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.bincount((idx + (np.arange(n_boot) * n)[:, None]).ravel(), minlength=n_boot * n)
    # float32 is exact for counts and sums below 2**24 and halves the memory traffic
    counts = counts.reshape(n_boot, n).astype(np.float32)
    aucs = np.full((n_boot, len(columns)), np.nan)
    for j, c in enumerate(columns):
        aucs[:, j] = _weighted_auc(Y[:, c], S[:, c], counts)
    if not len(columns):
        return np.full(n_boot, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row (no scorable class) -> NaN
        return np.nanmean(aucs, axis=1)


def _weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of ``weights`` (B, N) as record multiplicities; ties count half."""
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    w = weights[:, order]
    pos_w = w * yy
    neg_w = w - pos_w
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    if len(starts) < len(ss):  # merge tied scores into groups; skipped when all scores differ
        pos_w = np.add.reduceat(pos_w, starts, axis=1)
        neg_w = np.add.reduceat(neg_w, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    num = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_ci(
    Y: np.ndarray, S: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro AUC, resampling records (seeded)."""
    samples = bootstrap_macro_auc(Y, S, n_boot=n_boot, seed=seed)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the top-k targets that are relevant.

    Args:
        scores: (Q, T) similarity of each query to each target.
        relevant: (Q, T) boolean relevance.
        k: cut-off (clipped to T).
    """
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.take_along_axis(np.asarray(relevant, bool), top, axis=1).sum(axis=1).mean() / k)


@dataclass
class AucReport:
    """Macro AUC with its bootstrap interval and per-class detail, ready for tables and JSON."""

    macro_auc: float
    ci_low: float
    ci_high: float
    per_class: dict[str, float]
    skipped: list[str]
    n_records: int
    n_boot: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "macro_auc": self.macro_auc,
            "ci95": [self.ci_low, self.ci_high],
            "n_records": self.n_records,
            "n_boot": self.n_boot,
            "per_class": self.per_class,
            "skipped": self.skipped,
            **self.extra,
        }


def auc_report(
    Y: np.ndarray, S: np.ndarray, classes: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> AucReport:
    """Macro AUC, a seeded bootstrap CI (``n_boot=0`` skips it), per-class AUC and skipped classes."""
    macro, per_class, skipped = macro_auc(Y, S)
    if skipped.size:
        logger.info("%d class(es) lack positives or negatives and are skipped: %s",
                    skipped.size, ", ".join(classes[i] for i in skipped))
    low, high = bootstrap_ci(Y, S, n_boot=n_boot, seed=seed) if n_boot > 0 else (float("nan"),) * 2
    return AucReport(
        macro_auc=macro,
        ci_low=low,
        ci_high=high,
        per_class={c: float(a) for c, a in zip(classes, per_class)},
        skipped=[classes[i] for i in skipped],
        n_records=int(np.asarray(Y).shape[0]),
        n_boot=n_boot,
    )

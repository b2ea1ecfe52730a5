"""Cross-modal retrieval (ECG -> report, report -> ECG) recall@k on cached, normalised vectors.

Identical report texts are common in PTB-XL (thousands of records read "sinus rhythm, normal
ECG"), so a retrieved item is a hit when its report text equals the query's, not only when it
is the query's own record. Two further choices follow from that, both reported in the result:

- report -> ECG uses one query per unique report text (otherwise the most common report would
  be counted thousands of times with the same embedding and the same answer);
- ECG -> report searches a gallery of unique report texts (identical texts have identical
  embeddings, so duplicates would only fill the top-k with copies of one answer).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)


def _text_ids(query_texts: Sequence[str], target_texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Map texts to integer ids shared by queries and targets, so equality is an int compare."""
    vocab: dict[str, int] = {}
    q = np.fromiter((vocab.setdefault(t, len(vocab)) for t in query_texts), dtype=np.int64, count=len(query_texts))
    t = np.fromiter((vocab.setdefault(x, len(vocab)) for x in target_texts), dtype=np.int64, count=len(target_texts))
    return q, t


def recall_at_k(
    query_vecs: np.ndarray,
    target_vecs: np.ndarray,
    query_texts: Sequence[str],
    target_texts: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> dict[int, float]:
    """Fraction of queries with at least one top-k target (by inner product) whose text equals theirs.

    Args:
        query_vecs: (Q, D) query vectors (normalised, so inner product = cosine).
        target_vecs: (T, D) target vectors.
        query_texts: Q texts, one per query.
        target_texts: T texts, one per target.
        ks: cut-offs; each is clipped to T.
        chunk: queries scored per matrix product (bounds memory at chunk x T floats).

    Returns:
        {k: recall@k}.
    """
    query_vecs = np.asarray(query_vecs, dtype=np.float32)
    target_vecs = np.asarray(target_vecs, dtype=np.float32)
    if len(query_texts) != len(query_vecs) or len(target_texts) != len(target_vecs):
        raise ValueError("each query and target vector needs exactly one text")
    q_ids, t_ids = _text_ids(query_texts, target_texts)
    n_t = len(target_vecs)
    k_max = min(max(ks), n_t)
    hit_rank = np.full(len(query_vecs), np.inf)  # best rank (0-based) of a matching target
    for start in range(0, len(query_vecs), chunk):
        sims = query_vecs[start:start + chunk] @ target_vecs.T
        top = np.argpartition(-sims, k_max - 1, axis=1)[:, :k_max] if k_max < n_t else np.tile(np.arange(n_t), (len(sims), 1))
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        match = t_ids[top] == q_ids[start:start + chunk, None]
        first = np.where(match.any(axis=1), match.argmax(axis=1), np.inf)
        hit_rank[start:start + chunk] = first
    return {int(k): float(np.mean(hit_rank < min(k, n_t))) for k in ks}


def evaluate_retrieval(
    ecg_vecs: np.ndarray,
    text_vecs: np.ndarray,
    texts: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """ECG -> report and report -> ECG recall@k over one set of records (e.g. the test fold).

    Args:
        ecg_vecs: (N, D) ECG vectors.
        text_vecs: (N, D) report vectors of the same records.
        texts: N report texts.

    Returns:
        {"ecg_to_report": {k: r}, "report_to_ecg": {k: r}, "n_records", "n_unique_reports", "note"}.
    """
    texts = list(texts)
    if not (len(ecg_vecs) == len(text_vecs) == len(texts)):
        raise ValueError("ecg_vecs, text_vecs and texts must describe the same records")
    # first occurrence of each text: its vector stands for all copies (they are identical)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    uniq_rows = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    uniq_texts = list(first.keys())
    uniq_vecs = np.asarray(text_vecs)[uniq_rows]
    e2r = recall_at_k(ecg_vecs, uniq_vecs, texts, uniq_texts, ks)
    r2e = recall_at_k(uniq_vecs, ecg_vecs, uniq_texts, texts, ks)
    logger.debug("retrieval on %d records, %d unique reports", len(texts), len(uniq_texts))
    return {
        "ecg_to_report": e2r,
        "report_to_ecg": r2e,
        "n_records": len(texts),
        "n_unique_reports": len(uniq_texts),
        "note": "a hit is any item with the query's exact report text; report->ECG uses one query per "
                "unique report and ECG->report searches the unique reports",
    }

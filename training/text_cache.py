"""Pooled features of the UNIQUE report texts from a frozen text tower, computed once, kept on disk.

A frozen tower maps a text to the same features every step, so recomputing them per batch only
burns time (MiniLM is about as costly as the ECG tower on CPU). Files are keyed by the text model's
fingerprint, pooling and max_length, so a changed text model never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from etp_search.models.checkpoint import atomic_save_tensors, atomic_write_bytes
from etp_search.models.text_encoder import TextEncoder

log = logging.getLogger(__name__)


def unique_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Unique texts in first-seen order and, per input, its index into them."""
    vocab: dict[str, int] = {}
    index = np.fromiter((vocab.setdefault(t, len(vocab)) for t in texts), dtype=np.int64, count=len(texts))
    return list(vocab), index


def cache_key(encoder: TextEncoder) -> str:
    cfg = encoder.cfg
    raw = f"{encoder.fingerprint}|{cfg.pooling}|{cfg.max_length}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@torch.no_grad()
def compute_text_features(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 8192) -> torch.Tensor:
    """(N, hidden) float32 pooled features, on CPU.

    The encoder sorts each call's texts by length into its own small batches, so the chunks here are
    large (a chunk of 128 sorted only within itself: padding to the longest of a random 128); they
    only bound the memory of tokenising a very large report set at once.
    """
    out = [encoder(list(texts[i : i + batch_size])).float().cpu() for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0, encoder.out_dim)


class TextFeatureCache:
    """Features of unique texts, stored as DIR/text_features-<key>.safetensors + a .json list of texts.

    Args:
        directory: Where the files live (the run folder).
        encoder: The frozen text tower.
    """

    def __init__(self, directory: str | Path, encoder: TextEncoder) -> None:
        self.key = cache_key(encoder)
        self.encoder = encoder
        self.weights = Path(directory) / f"text_features-{self.key}.safetensors"
        self.index_file = Path(directory) / f"text_features-{self.key}.json"
        self.texts: list[str] = []
        self.features = torch.empty(0, encoder.out_dim)
        self._pos: dict[str, int] = {}
        self.computed = 0  # texts run through the tower by this object (0 when all came from disk)
        self._load()

    def _load(self) -> None:
        if not (self.weights.is_file() and self.index_file.is_file()):
            return
        try:
            texts = json.loads(self.index_file.read_text())["texts"]
            feats = load_file(str(self.weights))["features"]
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            log.warning("text feature cache %s unreadable (%s); recomputing", self.weights, exc)
            return
        if len(texts) != feats.shape[0]:
            log.warning("text feature cache %s is inconsistent; recomputing", self.weights)
            return
        self.texts, self.features = list(texts), feats
        self._pos = {t: i for i, t in enumerate(self.texts)}

    def ensure(self, texts: Sequence[str], write: bool = True) -> None:
        """Compute features for texts not cached yet and (if ``write``) save the grown cache."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._pos]
        if not todo:
            return
        log.info("computing text features for %d unique texts", len(todo))
        new = compute_text_features(self.encoder, todo)
        self.computed += len(todo)
        self.features = torch.cat([self.features, new])
        for t in todo:
            self._pos[t] = len(self.texts)
            self.texts.append(t)
        if write:
            self.save()

    def save(self) -> None:
        atomic_save_tensors({"features": self.features}, self.weights, metadata={"key": self.key})
        doc = {"key": self.key, "text_model": self.encoder.cfg.model_name, "texts": self.texts}
        atomic_write_bytes(self.index_file, json.dumps(doc, ensure_ascii=False).encode())

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, hidden) features in the order of ``texts`` (all must be cached)."""
        return self.features[torch.as_tensor([self._pos[t] for t in texts], dtype=torch.long)]

    def table(self, texts: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
        """Features of the unique texts among ``texts`` and each input's row in them."""
        uniq, index = unique_texts(texts)
        return self.lookup(uniq), index

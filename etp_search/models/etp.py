"""The ETP model: ECG tower + text tower, projection heads into one space, learnable temperature."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from etp_search.models.config import EtpConfig
from etp_search.models.ecg_encoders import create_ecg_encoder
from etp_search.models.text_encoder import TextEncoder


def _head(cin: int, dim: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(cin, dim)
    return nn.Sequential(nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, dim))


class EtpModel(nn.Module):
    """ECG-text dual encoder (open_clip's CLIP layout: encode_ecg / encode_text / logit_scale).

    Args:
        cfg: Model config (saved as config.json beside the weights).
        load_text: Load the text tower now. Pass False for ECG-only use (embedding an archive);
            ``encode_text`` then loads it on first call. ``encode_text_features`` never needs it.
    """

    def __init__(self, cfg: EtpConfig, load_text: bool = True) -> None:
        super().__init__()
        self.ecg_encoder = create_ecg_encoder(cfg.ecg.name, in_channels=cfg.ecg.in_channels, drop_rate=cfg.ecg.drop_rate)
        self.ecg_proj = _head(self.ecg_encoder.out_dim, cfg.embed_dim, cfg.proj_hidden)
        # Text width must be known without loading the tower; read it from the HF config when deferred.
        self.text_encoder: TextEncoder | None = None
        if load_text or not cfg.text.frozen:
            self.text_encoder = TextEncoder(cfg.text)
            text_dim = self.text_encoder.out_dim
        else:
            text_dim = cfg.text.width or _text_width(cfg)
        if cfg.text.width and cfg.text.width != text_dim:
            from etp_search.errors import ModelError

            raise ModelError(
                f"text model {cfg.text.model_name!r} has width {text_dim} but the config says {cfg.text.width}; "
                "the checkpoint was trained with another text model"
            )
        # The model keeps its own copy with the width filled in; the caller's config is not touched.
        self.cfg = replace(cfg, text=replace(cfg.text, width=text_dim))
        self.text_proj = _head(text_dim, cfg.embed_dim, cfg.proj_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale), dtype=torch.float32))
        if self.cfg.text.frozen:
            # DDP would broadcast the frozen tower's ~22M weights at start-up; every rank loads them itself.
            self._ddp_params_and_buffers_to_ignore = _FrozenNames(self)

    @property
    def text(self) -> TextEncoder:
        """The text tower, loaded on first use when the model was built with ``load_text=False``.

        A frozen tower is an ordinary submodule (it follows ``.to()``, ``.double()``, ...), with
        ``requires_grad`` off and its weights left out of ``state_dict()``.
        """
        if self.text_encoder is None:
            ref = self.logit_scale
            self.text_encoder = TextEncoder(self.cfg.text).to(device=ref.device, dtype=self.text_proj_dtype)
            self.text_encoder.train(self.training)
        return self.text_encoder

    @property
    def text_loaded(self) -> bool:
        return self.text_encoder is not None

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at cfg.max_logit_scale."""
        return self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()

    def encode_ecg(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 12, L) preprocessed signals -> (B, embed_dim)."""
        z = self.ecg_proj(self.ecg_encoder(x))
        return F.normalize(z, dim=-1) if normalize else z

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled text-tower features (B, text width) before the projection head."""
        return self.text(texts)

    def encode_text_features(self, feats: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Project cached pooled text features (B, text width) -> (B, embed_dim)."""
        z = self.text_proj(feats.to(self.logit_scale.device, dtype=self.text_proj_dtype))
        return F.normalize(z, dim=-1) if normalize else z

    @property
    def text_proj_dtype(self) -> torch.dtype:
        return next(self.text_proj.parameters()).dtype

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Raw report texts -> (B, embed_dim)."""
        return self.encode_text_features(self.text_features(texts), normalize=normalize)

    def forward(
        self, ecg: torch.Tensor, text_feats: torch.Tensor | None = None, texts: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Both embeddings and the scale, in the form the contrastive loss takes.

        Pass cached pooled ``text_feats`` (frozen tower) or raw ``texts`` (trainable tower).
        """
        if text_feats is None:
            if texts is None:
                raise ValueError("forward needs text_feats or texts")
            text_feats = self.text_features(texts)
        return {
            "ecg": self.encode_ecg(ecg),
            "text": self.encode_text_features(text_feats),
            "logit_scale": self.scale(),
        }


class _FrozenNames:
    """Names of the frozen tower's parameters and buffers, computed when DDP asks (tower may load late)."""

    def __init__(self, model: EtpModel) -> None:
        self._model = model

    def __iter__(self):
        enc = self._model.text_encoder
        if enc is None:
            return iter(())
        names = [f"text_encoder.{n}" for n, _ in enc.named_parameters()]
        names += [f"text_encoder.{n}" for n, _ in enc.named_buffers()]
        return iter(names)


def _text_width(cfg: EtpConfig) -> int:
    """Hidden size of the text model from its config.json alone (no weights loaded)."""
    from transformers import AutoConfig

    from etp_search.errors import ModelError
    from etp_search.models.text_encoder import resolve_text_model

    try:
        hf_cfg = AutoConfig.from_pretrained(resolve_text_model(cfg.text.model_name), local_files_only=cfg.text.local_files_only)
    except Exception as exc:  # noqa: BLE001 - transformers raises several types for a missing model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"cannot load text model {cfg.text.model_name!r} ({first[:160]}); pass a local folder with "
            "config.json + weights, or a Hugging Face name with network access and local_files_only=False"
        ) from None
    return int(hf_cfg.hidden_size)

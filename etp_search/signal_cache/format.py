"""The signal cache's file layout, shared by its writer and its reader (see ``etp_search.signal_cache``)."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

CACHE_KIND = "etp-search signal cache"
CACHE_VERSION = 1
_STR = h5py.string_dtype("utf-8")

#: Metadata columns: name -> (dtype, fill value for unknown).
META_COLUMNS: dict[str, tuple[Any, Any]] = {
    "age": (np.float32, np.nan),
    "sex": (np.int8, -1),
    "strat_fold": (np.int16, -1),
    "patient_id": (_STR, ""),
    "source": (_STR, ""),
    "missing_leads": (_STR, ""),  # comma-joined lead names the file did not have
    "flagged_leads": (_STR, ""),  # comma-joined leads zeroed by preprocessing (mostly NaN or flat)
    "orig_seconds": (np.float32, np.nan),  # duration before crop/pad
    "native_fs": (np.float32, np.nan),
}


def _text_key(source: str) -> str:
    return source.replace("/", "|")

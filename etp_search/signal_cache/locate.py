"""Where a dataset's signal cache lives and how it is opened, for `prepare` and `train`.

- ``default_cache_path``: ``etp-data/signals-<format>-<folder>-<hash8>-<preset>.h5`` under the
  working directory, named after the dataset folder(s) plus a hash of their resolved paths.
- ``open_reader``: the dataset (or several, or a list file) read at the preset's rate where PTB-XL
  offers it, so 100 Hz files are never upsampled when 500 Hz ones exist.
- ``ensure_cache``: ``train``'s DATA_DIR as a cache path: itself when it is a cache, a reusable
  cache of the same folder, or one built now.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from etp_search.errors import DataError

if TYPE_CHECKING:
    from etp_search.preprocess import Preset
    from etp_search.readers import Reader

logger = logging.getLogger(__name__)

CACHE_DIR = Path("etp-data")


def default_cache_path(fmt: str, preset: str, paths: Sequence[Path]) -> Path:
    """Where `prepare` (and `train`) write when no --out is given (relative to the working directory).

    Named after the dataset folder(s) plus a hash of their resolved paths: with format and preset
    alone, two PTB-XL folders shared one default cache (the second refused it, and --force would
    have destroyed the first's)."""
    resolved = [Path(p).resolve() for p in paths]
    name = re.sub(r"[^A-Za-z0-9.+_-]+", "_", "+".join(p.name for p in resolved))[:40].strip("._-+") or "data"
    digest = hashlib.sha256("\n".join(map(str, resolved)).encode()).hexdigest()[:8]
    return CACHE_DIR / f"signals-{fmt}-{name}-{digest}-{preset}.h5"


def open_reader(data_dir: Path | Sequence[Path], preset: Preset, *, sampling_rate: int | None = None,
                text_source: str = "scp_en", fmt: str | None = None) -> Reader:
    """Open the dataset (or several, or a list file), reading PTB-XL's files at the preset's rate unless a rate is given."""
    from etp_search.readers import dataset_paths, detect_format, open_dataset

    paths = dataset_paths(data_dir)
    names = [fmt or detect_format(p) for p in paths]
    if sampling_rate is None and "ptbxl" in names and preset.fs in (100, 500):
        sampling_rate = preset.fs  # never upsample PTB-XL's 100 Hz files when 500 Hz ones exist
    data_dir = paths[0] if len(paths) == 1 else paths
    reader = open_dataset(data_dir, fmt=names[0] if len(paths) == 1 else fmt, sampling_rate=sampling_rate,
                          text_source=text_source)
    if reader.fs and reader.fs < preset.fs:
        logger.warning("upsampling %s Hz records to %s Hz adds no information", reader.fs, preset.fs)
    return reader


def ensure_cache(data: Sequence[Path], preset: str, cache: Path | None, text_source: str, *, build: bool = True,
                 progress: bool = True) -> Path:
    """DATA_DIR as a signal cache path: itself when it is one, else build/reuse a cache of the folder(s).

    Several folders (or a list file, or a NumPy sidecar .json) become one cache; a record id present
    in more than one of them is kept once (the reader logs how many). ``build=False`` (the other
    ranks under torchrun) only names the path rank 0 builds.
    """
    from etp_search.preprocess import get_preset
    from etp_search.readers import dataset_paths, detect_format
    from etp_search.readers.multi import is_list_file
    from etp_search.readers.npy_folder import is_sidecar_file
    from etp_search.signal_cache.build import build_cache
    from etp_search.signal_cache.read import SignalCache, is_signal_cache

    if len(data) == 1 and data[0].is_file() and is_signal_cache(data[0]):
        return data[0]
    for d in data:
        if not d.exists():
            raise DataError(f"{d} does not exist; pass a dataset folder or a signal cache .h5")
        if d.is_file() and not (is_list_file(d) or is_sidecar_file(d)):
            raise DataError(f"{d} is not a finished signal cache; pass a dataset folder or a cache from `etp-search prepare`")
    paths = dataset_paths(data[0] if len(data) == 1 else list(data))
    p = get_preset(preset)
    fmts = [detect_format(d) for d in paths]
    target = cache or default_cache_path("+".join(dict.fromkeys(fmts)), p.name, paths)
    if len(paths) == 1 and is_signal_cache(target):
        with SignalCache.open(target) as existing:
            same_data = Path(str(existing.attrs.get("data_dir", ""))).resolve() == paths[0].resolve()
            if same_data and existing.preset.name == p.name and text_source in existing.text_sources:
                # Every text source is cached, so a cache built for another default source serves too.
                logger.info("signal cache %s: %d records (reused)", target, len(existing))
                return target
    if build:  # PTB-XL read at the preset's rate, as `prepare` reads it
        reader = open_reader(paths[0] if len(paths) == 1 else paths, p, text_source=text_source)
        summary = build_cache(reader, target, p, progress=progress)
        logger.info("signal cache %s: %d records (%s)", target, summary["records"],
                    "reused" if summary["up_to_date"] else "built")
    return target

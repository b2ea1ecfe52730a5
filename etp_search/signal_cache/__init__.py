"""A preprocessed-signal cache: one HDF5 file that replaces parsing thousands of WFDB records.

Layout of the file (all datasets have one row per kept record, in the reader's ``refs()`` order):

    /signals           (N, 12, L) float32, preprocessed with the preset in attrs["preset"]
    /ids               (N,) str
    /labels            (N,) str, JSON dict of the reader's native label codes
    /texts/<source>    (N,) str, one dataset per text source the reader produced ("/" in a name -> "|")
    /meta/<column>     (N,) age float32, sex int8, strat_fold int16, patient_id/source/... str
    attrs              preset (JSON), format, data_dir, text_source, fs, package_version, skipped ...

The pieces:

- ``etp_search.signal_cache.format``: that layout's names (kind, version, metadata columns).
- ``etp_search.signal_cache.build``: ``build_cache`` runs the reader and the preprocessing through
  ``etp_search.pipeline`` (the DataLoader pipeline `index` uses too; it keeps the order) and writes
  batch by batch into ``OUT.partial``, whose ``refs_done`` attribute is flushed after every batch.
  An interrupted build resumes from there; the finished file is published onto ``OUT`` in one
  rename (``indexing._io.publish``), so an existing cache is never left half-written.
- ``etp_search.signal_cache.read``: ``SignalCache``, read access to a finished cache (picklable,
  reopened per process), ``is_signal_cache`` and ``iter_batches``.
- ``etp_search.signal_cache.locate``: where a cache lives (``default_cache_path``), the reader
  `prepare` opens (``open_reader``: PTB-XL at the preset's rate) and ``ensure_cache``, `train`'s
  DATA_DIR as a cache (itself, a reusable one, or one built now).

Every name is importable from ``etp_search.signal_cache`` itself.
"""

from etp_search.signal_cache.build import DEFAULT_BATCH_SIZE, build_cache, cache_row, default_workers
from etp_search.signal_cache.format import CACHE_KIND, CACHE_VERSION, META_COLUMNS
from etp_search.signal_cache.locate import CACHE_DIR, default_cache_path, ensure_cache, open_reader
from etp_search.signal_cache.read import SignalCache, is_signal_cache, iter_batches

__all__ = ["CACHE_DIR", "CACHE_KIND", "CACHE_VERSION", "DEFAULT_BATCH_SIZE", "META_COLUMNS", "SignalCache", "build_cache",
           "cache_row", "default_cache_path", "default_workers", "ensure_cache", "is_signal_cache", "iter_batches",
           "open_reader"]

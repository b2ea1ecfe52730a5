"""Any folder of WFDB records, searched recursively; header comments are the report.

Lead names are matched in any case and spacing (``i``, ``avr``, ``AVL``, ``'V1 '``) and rows are
put in the standard 12-lead order. Missing standard leads are zero-filled and listed in
``meta['missing_leads']``. Channels that are no standard lead (respiration, Frank X/Y/Z, ...)
are dropped and listed in ``meta['dropped_channels']``; a record with no standard lead at all is
skipped with reason "unknown lead".
"""

from __future__ import annotations

import os
from pathlib import Path

from etp_search.readers.base import REPORT, SCP_EN, Reader, SkipRecord, native_text_source, parse_age_sex
from etp_search.readers.wfdb_io import read_wfdb
from etp_search.records import EcgRecord

#: Separator between header comment lines in the report text.
COMMENT_SEPARATOR = "; "


class WfdbFolderReader(Reader):
    """Reader for a folder tree of ``.hea`` + signal files; record id = path relative to the root."""

    format_name = "wfdb"

    def __init__(self, root: str | Path, text_source: str = SCP_EN) -> None:
        super().__init__(root, text_source)
        self.text_source = native_text_source(text_source, self.format_name)
        self.fs = None  # any rate; each record keeps its own

    def _list_refs(self) -> tuple[list[str], int]:
        refs = []
        for dirpath, dirnames, files in os.walk(self.root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            refs += [(rel / f[:-4]).as_posix() for f in sorted(files) if f.endswith(".hea")]
        # Missing signal files are found when a header is read ("missing signal file"):
        # knowing them here would mean parsing every header.
        return refs, 0

    def read(self, ref: str) -> EcgRecord:
        path = self.root / ref
        if not Path(f"{path}.hea").exists():
            raise SkipRecord("unknown record", ref)
        sig = read_wfdb(path)
        age, sex = parse_age_sex(sig.comments)
        text = COMMENT_SEPARATOR.join(c for c in sig.comments if c)
        meta = {"age": age, "sex": sex, "strat_fold": -1, "source": ref, "missing_leads": sig.missing_leads,
                "texts": {REPORT: text}}
        if sig.dropped_channels:
            meta["dropped_channels"] = sig.dropped_channels
        if sig.nan_samples:
            meta["nan_samples"] = sig.nan_samples
        return EcgRecord(id=ref, signal=sig.signal, fs=sig.fs, text=text, labels={}, meta=meta)

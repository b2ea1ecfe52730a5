"""Any folder of WFDB records, searched recursively; header comments are the report and the labels.

Lead names are matched in any case and spacing (``i``, ``avr``, ``AVL``, ``'V1 '``) and rows are
put in the standard 12-lead order. Missing standard leads are zero-filled and listed in
``meta['missing_leads']``. Channels that are no standard lead (respiration, Frank X/Y/Z, ...)
are dropped and listed in ``meta['dropped_channels']``; a record with no standard lead at all is
skipped with reason "unknown lead".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from etp_search.readers.base import REPORT, SCP_EN, Reader, SkipRecord, native_text_source, parse_age_sex
from etp_search.readers.snomed import diagnosis, parse_dx
from etp_search.readers.wfdb_io import read_wfdb
from etp_search.records import EcgRecord

#: Separator between header comment lines in the report text.
COMMENT_SEPARATOR = "; "
#: Comment keys that carry patient data or recording facts, never a label.
NOT_LABEL_KEYS = {"age", "sex", "gender", "rx", "hx", "sx", "height", "weight", "date", "time", "id", "device", "lead"}
#: Comment keys whose values are labels (LUDB writes ``<rhythms>:`` and ``<diagnoses>:``).
LABEL_KEYS = {"rhythm", "rhythms", "diagnosis", "diagnoses", "statement", "statements", "interpretation",
              "finding", "findings", "label", "labels", "reason"}


def comment_labels(comments: list[str]) -> dict[str, float]:
    """Labels from WFDB header comments, so `zeroshot --labels` has ground truth on any folder.

    - ``Dx: 164889003,59118001`` (CinC style): SNOMED codes named by the challenges' table;
    - ``Rhythm: Sinus rhythm.`` / ``Diagnosis: a, b`` (keys in ``LABEL_KEYS``): each value is a label;
    - a line without ``key:`` (free text such as ``atrial fibrillation``) is one label;
    - any other ``key: value`` line is the label ``"key: value"`` (``electric axis of the heart: normal``);
    - patient and recording facts (Age, Sex, Rx, Hx, ...) are not labels.
    Labels are lower-case with trailing punctuation removed ("sinus rhythm").
    """
    labels: dict[str, float] = {}
    for code in parse_dx(comments):
        labels[diagnosis(code).name.lower()] = 1.0
    for line in comments:
        key, sep, value = line.partition(":")
        key = key.strip().strip("<>").strip().lower()
        if sep and (key in NOT_LABEL_KEYS or key == "dx"):
            continue
        if sep and key not in LABEL_KEYS:
            value = value.strip().strip(".").strip().lower()
            if value:
                labels[f"{key}: {value}"] = 1.0
            continue
        for part in re.split(r"[;,]", value if sep else line):
            name = part.strip().strip(".").strip().lower()
            if name and name not in ("unknown", "none", "n/a"):
                labels[name] = 1.0
    return labels


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
        return EcgRecord(id=ref, signal=sig.signal, fs=sig.fs, text=text, labels=comment_labels(sig.comments), meta=meta)

"""Several dataset folders read as one: WFDB and NumPy records in one cache, one store, one run.

    reader = open_dataset(["ptbxl/", "ptbxl-npy100.json"])   # or a list file, one path per line

Record ids must be unique across the folders, because the cache, the store and every evaluation
key records by id. An id present in more than one folder is kept once, from the first folder that
has it (the order given), and counted in ``duplicates``; each verb logs the count.

A list file is plain text: one dataset folder (or NumPy sidecar .json) per line, relative to the
list file's folder; blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from etp_search.errors import DataError
from etp_search.readers.base import Reader, SkipRecord
from etp_search.records import EcgRecord

logger = logging.getLogger(__name__)

#: Suffixes read as list files when passed where a dataset folder is expected.
LIST_SUFFIXES = (".txt", ".list")


def is_list_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in LIST_SUFFIXES


def read_list_file(path: Path) -> list[Path]:
    """The dataset paths a list file names, resolved against its folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"list file {path} cannot be read ({type(exc).__name__}); write one dataset folder per line") from None
    out = []
    for n, line in enumerate(lines, 1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        p = Path(item)
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise DataError(f"list file {path} line {n}: {item} does not exist (paths are relative to the list file)")
        out.append(p)
    if not out:
        raise DataError(f"list file {path} names no dataset; write one dataset folder per line")
    return out


class MultiReader(Reader):
    """The union of several readers, each id once (first reader wins).

    Args:
        readers: Opened readers, in priority order.
        text_source: The text source the caller asked for (each reader resolved it for its layout).
    """

    def __init__(self, readers: Sequence[Reader], text_source: str) -> None:
        if not readers:
            raise DataError("no dataset given; pass one or more dataset folders")
        super().__init__(readers[0].root, text_source)
        self.readers = list(readers)
        self.roots = [r.root for r in self.readers]
        self.format_name = "+".join(dict.fromkeys(r.format_name for r in self.readers))
        rates = {r.fs for r in self.readers}
        self.fs = rates.pop() if len(rates) == 1 else None
        self.duplicates = 0
        self._where: dict[str, tuple[int, str]] = {}

    def _list_refs(self) -> tuple[list[str], int]:
        refs: list[str] = []
        missing = 0
        self.duplicates = 0
        for i, reader in enumerate(self.readers):
            for ref in reader.refs():
                rid = str(ref)
                if rid in self._where:
                    self.duplicates += 1
                    continue
                self._where[rid] = (i, ref)
                refs.append(rid)
            missing += reader.summary.missing_files
        if self.duplicates:
            logger.info("%d record id(s) present in more than one folder kept once (from the first folder given)",
                        self.duplicates)
        return refs, missing

    def read(self, ref: str) -> EcgRecord:
        if not self._where:
            self.refs()
        try:
            i, child_ref = self._where[str(ref)]
        except KeyError:
            raise SkipRecord("unknown record", str(ref)) from None
        return self.readers[i].read(child_ref)

    def source_of(self, ref: str) -> Path:
        """The folder a record id is read from."""
        if not self._where:
            self.refs()
        return self.readers[self._where[str(ref)][0]].root

    def __repr__(self) -> str:
        return f"MultiReader({', '.join(repr(r) for r in self.readers)})"

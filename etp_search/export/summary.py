"""What one ``index`` run reports: ``IndexSummary`` (the CLI's table and ``--json``) and ``IndexInfo``
(each FAISS index as the run left it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class IndexInfo:
    """One FAISS index as ``index`` left it."""

    factory: str | None
    n_rows: int | None
    recall_at_10: float | None
    nprobe: int | None
    on_gpu: bool | None


@dataclass(frozen=True)
class IndexSummary:
    """What one ``index`` run did. ``summary["written"]`` works too (read-only mapping access)."""

    store: str
    checkpoint: str
    device: str
    format: str
    records_found: int
    written: int
    already_stored: int
    skipped: dict[str, int]
    seconds: float
    records_per_s: float | None
    rows: int
    ecg_index: IndexInfo | None = None
    text_index: IndexInfo | None = None
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> the first ids

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: v for k, v in out.items() if not (k.endswith("_index") and v is None)}

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__ or (key.endswith("_index") and getattr(self, key) is None):
            raise KeyError(key)
        value = getattr(self, key)
        return asdict(value) if isinstance(value, IndexInfo) else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.as_dict()

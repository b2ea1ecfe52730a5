"""Embedding export: reader -> mapper -> writer (clip-retrieval's split), run by ``runner.index_data``.

- ``source``  reads records (a dataset folder through worker processes, or a signal cache) and
  preprocesses them into batches;
- ``mapper``  turns a batch into ECG and report vectors with an ETP model;
- ``writer``  appends whole batches to the embedding store and keeps its FAISS indexes current;
- ``summary`` what a run reports (``IndexSummary``, ``IndexInfo``).
"""

from etp_search.export.runner import index_data
from etp_search.export.summary import IndexInfo, IndexSummary
from etp_search.models.resolve import resolve_checkpoint

__all__ = ["IndexInfo", "IndexSummary", "index_data", "resolve_checkpoint"]

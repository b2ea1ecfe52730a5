"""Approximate-nearest-neighbour indexes sized to the corpus and a memory budget.

- ``indexing.ann.plan``: which layout (``plan_index``: Flat below ~200k rows, IVF-Flat up to a
  few million, IVF-PQ with an SQ8 refine step beyond or when the budget no longer holds the full
  vectors), its parameters and the RAM it needs; numbers only.
- ``indexing.ann.build``: train on a sample, add rows chunk by chunk from an array-like source
  (never all vectors in memory), inverted lists on disk (``.ivfdata``, memory-mapped by
  ``load_index``), ``write_faiss_file`` / ``load_index`` / ``set_search_params``.
- ``indexing.ann.for_store``: ``store_builder``, the builder ``index --factory auto`` hands to
  ``indexing.index_files`` (plan, build, held-out recall@10 for the sidecar).
- Recall is measured as for every index, by ``indexing.build`` (re-exported here):
  ``exact_knn`` streamed by chunks, ``recall_at_k``, ``tune_nprobe`` (the probe count for a
  target), ``held_out_recall`` (on rows of the indexed data, own hit dropped).

Vectors are L2-normalised float32 and searched by inner product (cosine), as in the store.
Only numpy, h5py, faiss and ``indexing`` itself are imported: ``indexing/`` imports nothing of the
rest of the project. Every name is importable from ``indexing.ann`` itself.
"""

from indexing.ann.build import BuildReport, build_index, load_index, set_search_params, write_faiss_file
from indexing.ann.for_store import VectorColumn, store_builder
from indexing.ann.plan import (FLAT_MAX_ROWS, IVF_FLAT_MAX_ROWS, KINDS, PQ_MIN_ROWS, TRAIN_MAX, TRAIN_PER_LIST,
                               AnnError, IndexPlan, Kind, default_nlist, default_pq_m, estimate_memory,
                               parse_bytes, plan_index)
from indexing.build import exact_knn, held_out_recall, recall_at_k, tune_nprobe
from indexing.faiss_index import DEFAULT_CHUNK_ROWS, Rows, iter_chunks, sample_rows

__all__ = ["DEFAULT_CHUNK_ROWS", "FLAT_MAX_ROWS", "IVF_FLAT_MAX_ROWS", "KINDS", "PQ_MIN_ROWS", "TRAIN_MAX",
           "TRAIN_PER_LIST", "AnnError", "BuildReport", "IndexPlan", "Kind", "Rows", "VectorColumn", "build_index",
           "default_nlist", "default_pq_m", "estimate_memory", "exact_knn", "held_out_recall", "iter_chunks",
           "load_index", "parse_bytes", "plan_index", "recall_at_k", "sample_rows", "set_search_params",
           "store_builder", "tune_nprobe", "write_faiss_file"]

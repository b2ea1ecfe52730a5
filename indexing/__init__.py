"""Embedding store (HDF5) and FAISS index: arrays in, arrays out (numpy, h5py, faiss only).

- ``indexing.store.EmbeddingStore``: crash-safe append-only store of vectors + record metadata
  (schema and column reads) on ``indexing.segments`` (parts, tier merges, compaction, the writer's
  lock) and ``indexing.columns`` (the file's column layout); ``indexing.batch`` checks an append.
- ``indexing.faiss_index``: chunked reads, factory checks, filtered search, incremental add, one index file.
- ``indexing.build``: the one builder (any factory or a planned layout, streamed in chunks, GPU,
  on-disk lists) over ``indexing.plan`` (layout and RAM by rows and budget) and ``indexing.recall``
  (held-out recall@10, nprobe tuned); ``store_builder`` is what ``index`` builds with.
- ``indexing.index_files``: index files + sidecar (rows, which vectors, SHA-256); ``build_or_update``,
  the writer's step at the end of ``index`` (the only code that writes index files).
- ``indexing.view.SearchView``: read-only search, saved index + exact search over the store's tail.
- ``indexing.gpu``: GPU detection and CPU <-> GPU copies.
- ``indexing.filters``: ``--where`` expressions -> row masks.
- ``indexing.idmap.IdMap``: record id -> row in numpy arrays (sorted 64-bit hashes, checked keys).
"""

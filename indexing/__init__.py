"""Embedding store (HDF5) and FAISS index: arrays in, arrays out (numpy, h5py, faiss only).

- ``indexing.store.EmbeddingStore``: crash-safe append-only store of vectors + record metadata.
- ``indexing.faiss_index``: build / search (filters inside FAISS) / save / load / update, and
  ``open_or_build(store, which)`` that keeps an index in step with its store.
- ``indexing.filters``: ``--where`` expressions -> row masks.
"""

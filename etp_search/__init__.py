"""etp-search: ECG-text embeddings (ETP), an HDF5 + FAISS store, zero-shot labelling, retrieval, probing."""

__version__ = "0.1.0"

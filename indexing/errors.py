"""Errors of the indexing layer (kept free of etp_search imports); the CLI prints them as one line."""


class IndexingError(Exception):
    """Base class: a store or index problem the user can fix; the message says how."""


class StoreError(IndexingError):
    """The store file is missing, unreadable, or of another version/dimension."""


class IndexStaleError(IndexingError):
    """The FAISS index file is missing, corrupt or does not match its store (rebuildable)."""

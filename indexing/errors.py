"""Errors of the indexing layer (kept free of etp_search imports); the CLI prints them as one line."""


class IndexingError(Exception):
    """Base class: a store or index problem the user can fix; the message says how."""


class StoreError(IndexingError):
    """The store file is missing, unreadable, or of another version/dimension."""


class IndexStaleError(IndexingError):
    """The FAISS index file is missing, corrupt or does not match its store (rebuildable)."""


class ProvenanceMismatchError(StoreError):
    """The store was built with another checkpoint / preprocessing than the one in use."""

    def __init__(self, message: str, fields: list[str]):
        super().__init__(message)
        #: Names of the provenance fields that differ (e.g. ``["checkpoint_sha256"]``).
        self.fields = fields


class RecordNotFoundError(StoreError, KeyError):
    """A record id that is not in the store."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it one plain line
        return str(self.args[0]) if self.args else ""


class FilterError(IndexingError):
    """A ``--where`` expression that cannot be parsed or names an unknown column."""

"""Errors a user can cause and fix. The CLI prints their message as one line and exits 1."""


class EtpError(Exception):
    """Base class for user-facing errors; the message must say how to fix the problem."""


class DataError(EtpError):
    """A dataset folder, record or table is missing, malformed or of an unknown layout."""


class ModelError(EtpError):
    """A model name, checkpoint or text model cannot be resolved or does not match."""


class StoreMismatchError(EtpError):
    """A store was written by another checkpoint/preset than the one reading it."""

"""The ingest package's exceptions: one root, `IngestError`, for every error it raises.

    IngestError
    ├── SpoolError              the spool cannot do what was asked (I/O error, closed, in use)
    │   ├── SpoolFull           no room for a record: the caller holds it and retries
    │   │   └── DiskFull        the filesystem refused a write (ENOSPC, EDQUOT, EFBIG)
    │   └── CorruptRecordError  a record on disk is torn or damaged (never leaves the spool)
    ├── SinkError               a batch was not stored
    │   ├── TransientSinkError  unreachable, slow or overloaded: retry the batch with backoff
    │   └── PermanentSinkError  credentials or a missing database: retry slowly, loudly
    │       └── RejectedBatchError  the server refused the data itself: set it aside
    └── QueryError              an analyst query failed (InfluxDB unreachable, refused, error)

Each is importable from where it is used too (`ingest.spool`, `ingest.sinks`,
`ingest.query`) and from `ingest`.
"""

from __future__ import annotations

__all__ = [
    "CorruptRecordError",
    "DiskFull",
    "IngestError",
    "PermanentSinkError",
    "QueryError",
    "RejectedBatchError",
    "SinkError",
    "SpoolError",
    "SpoolFull",
    "TransientSinkError",
]


class IngestError(Exception):
    """The root of every exception the ingest package defines."""


class SpoolError(IngestError):
    """The spool cannot do what was asked (I/O error, closed, directory in use)."""


class SpoolFull(SpoolError):
    """No room for the record under `max_bytes` (or on the disk): the caller must hold it."""

    def __init__(self, needed: int, used: int, max_bytes: int) -> None:
        """Keep the numbers the caller logs."""
        super().__init__(f"spool full: {used} of {max_bytes} bytes used, {needed} more needed")
        self.needed = needed
        self.used = used
        self.max_bytes = max_bytes


class DiskFull(SpoolFull):
    """The spool's filesystem refused a write or fsync for lack of room (ENOSPC, EDQUOT,
    EFBIG): like SpoolFull, the caller holds the record and retries."""

    def __init__(self, cause: OSError, used: int) -> None:
        """Keep the refusal (`cause`) and the spool's bytes of records (`used`)."""
        IngestError.__init__(self, f"disk full: {cause.strerror or cause} "
                                   f"(errno {cause.errno}); the spool holds {used} bytes")
        self.needed = 0
        self.used = used
        self.max_bytes = 0
        self.errno = cause.errno
        self.cause = cause


class CorruptRecordError(SpoolError):
    """A spool record is torn or damaged; `reason` says how (recovery cuts it, reads skip it)."""

    def __init__(self, reason: str) -> None:
        """Keep the reason the spool logs."""
        super().__init__(reason)
        self.reason = reason


class SinkError(IngestError):
    """A batch was not stored."""


class TransientSinkError(SinkError):
    """The server is unreachable, slow or overloaded: retry the same batch later."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        """Keep the HTTP status (None without a response) and the server's Retry-After."""
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class PermanentSinkError(SinkError):
    """The server refuses us (credentials, missing database): retrying needs a fix first."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        """Keep the HTTP status."""
        super().__init__(message)
        self.status = status


class RejectedBatchError(PermanentSinkError):
    """The server refused the data itself; `rejected_lines` of the batch are not stored."""

    def __init__(self, message: str, *, status: int | None, rejected_lines: int) -> None:
        """Keep how many lines were refused (the server's count when it gives one)."""
        super().__init__(message, status=status)
        self.rejected_lines = rejected_lines


class QueryError(IngestError):
    """InfluxDB could not be reached, refused the request, or failed the statement."""

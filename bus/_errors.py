"""The one exception hierarchy of trainbus.

::

    TrainbusError
    ├── ConfigurationError          (also a ValueError) bad user input, raised before training
    ├── JournalError                the run journal cannot be read or written
    │   └── JournalCorruptError     a record failed its checksum or framing (not a torn tail)
    └── SinkError                   a sink could not deliver a batch
        ├── RetryableSinkError      try again later (timeouts, connection errors, 408/429/5xx)
        └── PermanentSinkError      will never succeed (other 4xx): reported, counted, skipped

Sinks translate their transport's exceptions into ``RetryableSinkError`` / ``PermanentSinkError``
in one place (a ``_map_errors()`` context manager per remote API); the sink runtime only ever
sees these two. Any other exception escaping a sink is treated as a bug in that sink: logged,
retried a bounded number of times, then the sink is disabled while the run goes on.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "JournalCorruptError",
    "JournalError",
    "PermanentSinkError",
    "RetryableSinkError",
    "SinkError",
    "TrainbusError",
]


class TrainbusError(Exception):
    """Base class of every exception trainbus raises on purpose."""


class ConfigurationError(TrainbusError, ValueError):
    """Bad user input; the message names the field and what was expected."""


class JournalError(TrainbusError):
    """The run journal cannot be read or written."""


class JournalCorruptError(JournalError):
    """A journal record failed its checksum or framing somewhere other than the tail."""


class SinkError(TrainbusError):
    """A sink could not deliver a batch."""


class RetryableSinkError(SinkError):
    """Delivery failed for a reason that may pass; ``retry_after`` is the server's hint (s)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """Delivery can never succeed (e.g. HTTP 400); ``status`` and ``body`` come from the server."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

"""The one exception hierarchy of trainbus.

::

    TrainbusError
    ├── ConfigurationError          (also a ValueError) bad user input, raised before training
    │   └── StateFileError          (also a JournalError) a file read back (trainer_state.json, a
    │                               cursor) is truncated, corrupt or does not fit the run
    ├── DistributedError            a collective failed: another rank died, raised or took
    │                               another path (the message says what this rank was doing)
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
    "DistributedError",
    "JournalCorruptError",
    "JournalError",
    "PermanentSinkError",
    "RetryableSinkError",
    "SinkError",
    "StateFileError",
    "TrainbusError",
]


class TrainbusError(Exception):
    """Base class of every exception trainbus raises on purpose."""


class ConfigurationError(TrainbusError, ValueError):
    """Bad user input; the message names the field and what was expected."""


class DistributedError(TrainbusError):
    """A collective failed on this rank; the message names what the rank was doing."""


class JournalError(TrainbusError):
    """The run journal cannot be read or written."""


class StateFileError(ConfigurationError, JournalError):
    """A file trainbus reads back cannot be used; the message names the file and what is wrong.

    A `ConfigurationError` because the user handed it in (``resume_from_checkpoint``, a run
    directory to sync), so the CLI exits 2 with one line; a `JournalError` because a cursor is
    part of the journal's bookkeeping, and code that catches journal problems should see it.
    """


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

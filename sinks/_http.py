"""The HTTP edge shared by the remote sinks: one place where httpx's failures become ours.

Inside ``map_errors()`` a sink does its request and calls ``response.raise_for_status()``; the
context manager turns whatever escapes into the two errors the sink runtime understands:

* ``RetryableSinkError``: timeouts, connection and protocol errors, HTTP 408, 429 and 5xx, with
  the server's ``Retry-After`` hint in seconds when it gave one;
* ``PermanentSinkError``: every other 4xx, with the status and (secret-free) response body.

``status_error`` is the same mapping for a status code and body obtained any other way.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import httpx

from trainbus.bus._errors import PermanentSinkError, RetryableSinkError, SinkError
from trainbus.bus._secrets import redact_url

__all__ = ["RETRYABLE_STATUS", "map_errors", "parse_retry_after", "status_error"]

RETRYABLE_STATUS: Final = frozenset({408, 425, 429})
_BODY_LIMIT: Final = 2000


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def status_error(
    service: str, method: str, path: str, status: int, retry_after: str | None, body: str
) -> SinkError:
    """The error for a response that was not a success: retryable or permanent, as above."""
    where = f"{service} {method} {redact_url(path)}"
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableSinkError(
            f"{where} answered HTTP {status}", retry_after=parse_retry_after(retry_after)
        )
    text = redact_url(body[:_BODY_LIMIT])
    return PermanentSinkError(
        f"{where} answered HTTP {status}: {text[:300]}", status=status, body=text
    )


@contextmanager
def map_errors(service: str) -> Iterator[None]:
    """Translate httpx exceptions raised inside the block; ``service`` names the API in messages."""
    try:
        yield
    except httpx.HTTPStatusError as exc:
        response = exc.response
        status = response.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        raise status_error(
            service,
            exc.request.method,
            str(exc.request.url.path),
            status,
            response.headers.get("Retry-After"),
            "" if retryable else _body_text(response),
        ) from None
    except httpx.TimeoutException as exc:
        raise RetryableSinkError(f"{service} timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        # Connection refused/reset, protocol errors: the server may come back.
        raise RetryableSinkError(
            f"{service} unreachable ({type(exc).__name__}: {redact_url(str(exc))})"
        ) from None


def _body_text(response: httpx.Response) -> str:
    try:
        return response.text[:_BODY_LIMIT]
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""

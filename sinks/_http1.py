"""A lean HTTP/1.1 client for many small POSTs, for APIs that take one point per request.

Why not httpx here: a sink runs on the bus's event-loop thread, so every microsecond of Python it
spends is GIL time taken from the training thread. httpx costs several hundred microseconds of CPU
per request (request and response models, header validation, a connection pool that re-checks
every pooled connection on each request); for Comet's REST API, which takes one metric per
request, that was most of what the sink cost. Here a request is a prebuilt head plus the body,
sent in one call on a kept-alive connection, and the response is read by a small parser (status
line, headers, then a ``Content-Length`` or chunked body, or everything until the server closes).

Scope, kept small on purpose: POST with a bytes body, over plain TCP or TLS (the trust store httpx
uses), no proxy, no redirects (a 3xx is an error, as with httpx's ``raise_for_status``), no
compression (``Accept-Encoding: identity``). Callers use httpx instead when the environment names
a proxy for the server (``env_proxy_for``). Failures come out as sink errors, as ``map_errors``
makes them for httpx: timeouts, connection and protocol errors, 408/425/429 and 5xx are
retryable, other statuses permanent. A connection that failed, timed out or was cancelled
mid-request is closed, never reused.
"""

from __future__ import annotations

import select
import socket
import ssl
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc
import httpx

from trainbus.bus._errors import RetryableSinkError
from trainbus.bus._secrets import redact_url
from trainbus.sinks._http import status_error

__all__ = ["Http1Client", "ProtocolError", "Reply", "env_proxy_for"]

_MAX_HEAD: Final = 64 << 10
_MAX_BODY: Final = 16 << 20
_TRANSPORT_ERRORS: Final = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.x response this client can read."""


@dataclass(frozen=True)
class Reply:
    """A complete response: status, headers (names lower-cased, repeats joined) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def env_proxy_for(url: httpx.URL) -> bool:
    """Whether the environment routes ``url`` through a proxy (``HTTPS_PROXY``, ``ALL_PROXY`` ...
    minus ``NO_PROXY``), as httpx's ``trust_env`` would: such servers are left to httpx."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.host)


class _Connection:
    """One kept-alive socket and the bytes received past the last response."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.socket: socket.socket | None = raw

    def looks_closed(self) -> bool:
        """An idle connection with something to read has been closed (or garbled) by the
        server: reusing it would fail, possibly after the request went out."""
        if self.buffer:
            return True
        if self.socket is None:
            return False
        try:
            if sys.platform == "win32" or not hasattr(select, "poll"):
                readable, _, _ = select.select([self.socket], [], [], 0)
                return bool(readable)
            poller = select.poll()
            poller.register(self.socket, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    async def exchange(self, request: bytes) -> tuple[Reply, bool]:
        """Send one request, read its response; also says whether the connection stays usable."""
        await self.stream.send(request)
        while True:
            head = await self._read_until(b"\r\n\r\n", _MAX_HEAD)
            version, status, headers = _parse_head(head)
            if status >= 200:
                break  # 1xx: an interim response, the real one follows
        connection = headers.get("connection", "").lower()
        # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes it unless asked.
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        if status in (204, 304):
            body = b""  # never a body, whatever the headers say
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"].split(",")[0])
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
            if not 0 <= length <= _MAX_BODY:
                raise ProtocolError(f"Content-Length {length} out of range")
            body = await self._read_exactly(length)
        else:
            body = await self._read_to_close()
            keep = False
        return Reply(status, headers, body), keep

    async def _fill(self) -> None:
        self.buffer += await self.stream.receive()

    async def _read_until(self, marker: bytes, limit: int) -> bytes:
        start = 0
        while (end := self.buffer.find(marker, start)) < 0:
            if len(self.buffer) > limit:
                raise ProtocolError("response head or chunk line too long")
            start = max(0, len(self.buffer) - len(marker) + 1)
            await self._fill()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await self._read_until(b"\r\n", 4096)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size == 0:
                while await self._read_until(b"\r\n", _MAX_HEAD):
                    pass  # trailer fields, up to the empty line
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise ProtocolError("chunked body too large")
            parts.append(await self._read_exactly(size))
            if await self._read_exactly(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    async def _read_to_close(self) -> bytes:
        try:
            while len(self.buffer) <= _MAX_BODY:
                await self._fill()
        except anyio.EndOfStream:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        raise ProtocolError("body too large")


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(rest[:3])
    except ValueError:
        raise ProtocolError(f"bad status line: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line: {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return version, status, headers


class Http1Client:
    """POSTs to one server over up to ``max_idle`` kept-alive connections (more are opened when
    more requests are in flight, and closed after). Not thread-safe: use it on one event loop."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        service: str,
        timeout: float,
        connect_timeout: float,
        max_idle: int = 8,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = httpx.URL(base_url)
        if self.base_url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme: {base_url}")
        self.service = service
        self._tls = self.base_url.scheme == "https"
        self._ssl_context = ssl_context
        self._host = self.base_url.host
        self._port = self.base_url.port or (443 if self._tls else 80)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        fields = {
            "Host": self.base_url.netloc.decode("ascii"),
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "Connection": "keep-alive",
            **headers,
        }
        for name, value in fields.items():  # checked once here, as httpx checks every request
            if not f"{name}{value}".isprintable():
                raise ValueError(f"HTTP header {name} has a line break or control character")
            f"{name}{value}".encode("latin-1")  # what the wire takes; raises now, not later
        self._fields = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self._heads: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._idle: list[_Connection] = []
        self._closed = False

    async def post(self, path: str, body: bytes, content_type: str) -> Reply:
        """POST ``body`` to ``path`` (relative to the base URL); a non-2xx status raises."""
        head, target = self._head(path, content_type)
        request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        connection: _Connection | None = None
        try:
            with anyio.fail_after(self._timeout):
                connection = await self._connection()
                reply, keep = await connection.exchange(request)
        except TimeoutError:
            await self._discard(connection)
            raise RetryableSinkError(f"{self.service} timed out (POST {target})") from None
        except (*_TRANSPORT_ERRORS, ProtocolError) as exc:
            await self._discard(connection)
            detail = redact_url(str(exc)) or "connection closed"
            raise RetryableSinkError(
                f"{self.service} unreachable ({type(exc).__name__}: {detail})"
            ) from None
        except BaseException:  # cancelled mid-request: the connection's state is unknown
            await self._discard(connection)
            raise
        if keep and not self._closed and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            await self._discard(connection)
        if not 200 <= reply.status < 300:
            text = reply.body.decode("utf-8", "replace")
            raise status_error(
                self.service, "POST", target, reply.status, reply.headers.get("retry-after"), text
            )
        return reply

    async def aclose(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await anyio.aclose_forcefully(connection.stream)

    def _head(self, path: str, content_type: str) -> tuple[bytes, str]:
        cached = self._heads.get((path, content_type))
        if cached is None:
            target = self.base_url.join(path).raw_path.decode("ascii")
            head = (
                f"POST {target} HTTP/1.1\r\n{self._fields}"
                f"Content-Type: {content_type}\r\nContent-Length: "
            )
            cached = self._heads[(path, content_type)] = (head.encode("latin-1"), target)
        return cached

    async def _connection(self) -> _Connection:
        if self._closed:
            raise anyio.ClosedResourceError("the client is closed")
        while self._idle:
            connection = self._idle.pop()
            if not connection.looks_closed():
                return connection
            await anyio.aclose_forcefully(connection.stream)
        stream: anyio.abc.ByteStream
        with anyio.fail_after(self._connect_timeout):
            if self._tls:
                stream = await anyio.connect_tcp(
                    self._host,
                    self._port,
                    tls=True,
                    ssl_context=self._ssl_context,
                    tls_hostname=self._host,
                )
            else:
                stream = await anyio.connect_tcp(self._host, self._port)
        return _Connection(stream)

    @staticmethod
    async def _discard(connection: _Connection | None) -> None:
        if connection is not None:
            await anyio.aclose_forcefully(connection.stream)

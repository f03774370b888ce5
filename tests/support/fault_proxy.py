"""A latency and fault injecting HTTP proxy on 127.0.0.1, for the tests and the benchmarks.

Put it between a sink and a real server to see what the sink does when the network misbehaves::

    with FaultProxy("http://127.0.0.1:5000", latency=0.2) as proxy:
        sink = MLflowSink(proxy.url, ...)
        proxy.fail_next(5)                      # the next five requests get HTTP 500
        proxy.throttle_next(2, retry_after=1)   # then two get 429 with Retry-After: 1
        proxy.go_down(3.0)                      # for three seconds, connections are dropped
        ...

The proxy runs its own event loop in a background thread (an anyio blocking portal), so the
code under test can use any loop, or none. Requests are parsed with h11 and forwarded with httpx;
while the proxy is "down" it closes connections without answering, the way a dead server or a
restarting load balancer looks to a client. Everything is bounded: ``stop()`` cancels every
connection, and a forwarded request gives up after ``upstream_timeout`` seconds with a 504.

It lives with the tests, not in the library: h11 is no dependency of trainbus (it arrives only
through httpx's transport), and no user needs a fault proxy to train.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import h11
import httpx

__all__ = ["FaultProxy", "ProxyStats"]

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"proxy-connection"}
)
_MAX_BODY = 64 << 20
_CLOSED = (anyio.BrokenResourceError, anyio.EndOfStream, h11.ProtocolError)


@dataclass
class ProxyStats:
    """What the proxy did so far."""

    requests: int = 0
    forwarded: int = 0
    dropped: int = 0
    injected: Counter[int] = field(default_factory=Counter)


class FaultProxy:
    """An HTTP/1.1 proxy to ``upstream`` with scripted latency and failures."""

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 60.0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.latency = latency
        self.host = host
        self.port = port
        self.upstream_timeout = upstream_timeout
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._script: list[tuple[int, float | None]] = []
        self._down_until = 0.0
        self._stack: contextlib.ExitStack | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: Any = None

    # --- control (thread-safe) ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's base URL, to use instead of ``upstream``."""
        return f"http://{self.host}:{self.port}"

    def fail_next(self, count: int, *, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` instead of forwarding them."""
        with self._lock:
            self._script.extend([(status, None)] * count)

    def throttle_next(self, count: int, *, retry_after: float = 1.0) -> None:
        """Answer the next ``count`` requests with 429 and ``Retry-After: retry_after``."""
        with self._lock:
            self._script.extend([(429, retry_after)] * count)

    def go_down(self, seconds: float | None = None) -> None:
        """Drop every connection for ``seconds`` (until ``go_up()`` when ``None``)."""
        with self._lock:
            self._down_until = float("inf") if seconds is None else time.monotonic() + seconds

    def go_up(self) -> None:
        """End a down window now."""
        with self._lock:
            self._down_until = 0.0

    @property
    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind the port and start serving in a background thread."""
        if self._portal is not None:
            return self
        stack = contextlib.ExitStack()
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
        self._stack, self._portal = stack, portal
        listener = portal.call(self._listen)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        # Made on the loop now, so a stop() right after start() has something to cancel.
        self._scope = portal.call(anyio.CancelScope)
        self._done = portal.start_task_soon(self._serve, listener, self._scope)
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call twice."""
        portal, stack = self._portal, self._stack
        self._portal = self._stack = None
        if portal is None or stack is None:
            return
        if self._scope is not None:
            portal.call(self._scope.cancel)
        with contextlib.suppress(BaseException):
            self._done.result(timeout=10)
        stack.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the event-loop side ------------------------------------------------------------------

    async def _listen(self) -> anyio.abc.Listener[anyio.abc.SocketStream]:
        return await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)

    async def _serve(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], scope: anyio.CancelScope
    ) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        async with (
            httpx.AsyncClient(timeout=self.upstream_timeout, limits=limits) as client,
            listener,
        ):
            with scope:
                await listener.serve(lambda stream: self._connection(stream, client))

    def _next_fault(self) -> tuple[int, float | None] | None:
        with self._lock:
            self.stats.requests += 1
            if self.is_down:
                self.stats.dropped += 1
                return (0, None)
            if self._script:
                status, retry_after = self._script.pop(0)
                self.stats.injected[status] += 1
                return (status, retry_after)
            return None

    async def _connection(self, stream: anyio.abc.SocketStream, client: httpx.AsyncClient) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        async with stream:
            with contextlib.suppress(*_CLOSED):
                while True:
                    request, body = await _read_request(conn, stream)
                    if request is None:
                        return
                    fault = self._next_fault()
                    if fault is not None and fault[0] == 0:
                        return  # "down": hang up without an answer
                    if self.latency > 0:
                        await anyio.sleep(self.latency)
                    if fault is not None:
                        status, retry_after = fault
                        headers = [(b"content-type", b"application/json")]
                        if retry_after is not None:
                            headers.append((b"retry-after", str(retry_after).encode()))
                        payload = b'{"error_code": "INJECTED_FAULT"}'
                        await _respond(conn, stream, status, headers, payload)
                    else:
                        await self._forward(conn, stream, client, request, body)
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()

    async def _forward(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        client: httpx.AsyncClient,
        request: h11.Request,
        body: bytes,
    ) -> None:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers
            if k.lower() not in _HOP_BY_HOP and k.lower() not in (b"host", b"content-length")
        ]
        try:
            upstream = await client.request(
                request.method.decode(),
                self.upstream + request.target.decode("latin-1"),
                headers=headers,
                content=body,
            )
        except httpx.TimeoutException:
            await _respond(conn, stream, 504, [], b"upstream timed out")
            return
        except httpx.TransportError:
            await _respond(conn, stream, 502, [], b"upstream unreachable")
            return
        with self._lock:
            self.stats.forwarded += 1
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.multi_items()
            if k.lower().encode() not in _HOP_BY_HOP
            and k.lower() not in ("content-length", "content-encoding")
        ]
        await _respond(conn, stream, upstream.status_code, out, upstream.content)


async def _read_request(
    conn: h11.Connection, stream: anyio.abc.SocketStream
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                data = b""
            conn.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > _MAX_BODY:
                raise h11.ProtocolError("request body too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return request, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None, b""


async def _respond(
    conn: h11.Connection,
    stream: anyio.abc.SocketStream,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send(data)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, printing the proxy URL on one line once listening.

    ``python -m tests.support.fault_proxy --upstream URL [--latency S] [--port N]``, run from the
    repository root.

    The proxy gets a process of its own, so its work does not compete with the measured process
    for its GIL (the benchmarks start it this way).
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Latency-adding HTTP proxy on 127.0.0.1")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FaultProxy(options.upstream, latency=options.latency, port=options.port) as proxy:
        print(proxy.url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()

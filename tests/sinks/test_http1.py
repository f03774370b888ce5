"""The lean HTTP/1.1 client (``trainbus.sinks._http1``) against a scripted server on 127.0.0.1.

The server reads each request (head and ``Content-Length`` body), records it with the number of
the connection it came on, and answers with the next scripted reply, written byte for byte, so
the tests can send what real servers send: chunked bodies with trailers, ``Connection: close``,
HTTP/1.0, bodies that end at close, a connection closed while idle, no answer at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx
import pytest

from trainbus.bus._errors import PermanentSinkError, RetryableSinkError
from trainbus.sinks._http1 import Http1Client, env_proxy_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
HANG = b""
"""A scripted reply that never comes."""
CLOSE = b"<close>"
"""Close the connection instead of answering."""


@dataclass
class Scripted:
    replies: list[bytes]
    close_after_reply: bool = False
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    url: str = ""
    _closing: anyio.Event | None = None

    async def wait_closed(self, count: int) -> None:
        """Wait until the server has closed ``count`` connections (bound it with ``fail_after``)."""
        while self.closed < count:
            self._closing = anyio.Event()
            await self._closing.wait()

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        try:
            await self._answer(stream)
        finally:
            self.closed += 1
            if self._closing is not None:
                self._closing.set()

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += await stream.receive()
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append((number, head, body))
                reply = self.replies.pop(0)
                if reply == CLOSE:
                    return
                if reply == HANG:
                    await anyio.sleep_forever()
                await stream.send(reply)
                if self.close_after_reply:
                    return


@asynccontextmanager
async def scripted(*replies: bytes, close_after_reply: bool = False) -> AsyncIterator[Scripted]:
    server = Scripted(list(replies), close_after_reply)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}/api/rest/v2/"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        yield server
        tg.cancel_scope.cancel()


def client(url: str, *, timeout: float = 5.0) -> Http1Client:
    return Http1Client(
        url, {"Authorization": "key"}, service="Comet", timeout=timeout, connect_timeout=5.0
    )


async def test_requests_go_out_complete_on_one_kept_alive_connection() -> None:
    """Head and body as written; chunked, sized and empty replies read whole; one connection."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"ms\r\n9\r\ng":"Saved\r\n2\r\n"}\r\n0\r\nX-Trailer: 1\r\n\r\n'
    )
    async with scripted(chunked, OK, b"HTTP/1.1 204 No Content\r\n\r\n") as server:
        lean = client(server.url)
        first = await lean.post("write/experiment/metric", b'{"a":1}', "application/json")
        second = await lean.post("write/experiment/metric", b'{"a":2}', "application/json")
        third = await lean.post("write/experiment/tags", b"[]", "application/json")
        await lean.aclose()
    assert (first.status, first.body) == (200, b'{"msg":"Saved"}')
    assert second.body == b"{}"
    assert (third.status, third.body) == (204, b"")
    assert server.connections == 1
    assert [number for number, _, _ in server.requests] == [1, 1, 1]
    _, head, body = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/rest/v2/write/experiment/metric HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Host"] == server.url.split("/")[2]
    assert fields["Authorization"] == "key"
    assert fields["Content-Type"] == "application/json"
    assert fields["Content-Length"] == "7"
    assert body == b'{"a":1}'
    assert server.requests[2][1].startswith(b"POST /api/rest/v2/write/experiment/tags HTTP/1.1")


async def test_a_connection_the_server_ends_is_not_reused() -> None:
    """``Connection: close``, HTTP/1.0, a body that ends at close, or a connection closed while
    idle: the next request goes out on a new connection, and every one succeeds."""
    replies = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n\r\n{}",
    ]
    async with scripted(*replies, close_after_reply=True) as server:
        lean = client(server.url)
        for _ in replies:
            reply = await lean.post("m", b"{}", "application/json")
            assert reply.body == b"{}"
        await lean.aclose()
    assert server.connections == 3
    async with scripted(OK, OK, close_after_reply=True) as server:  # closed while idle
        lean = client(server.url)
        await lean.post("m", b"{}", "application/json")
        with anyio.fail_after(5):
            await server.wait_closed(1)
        await lean.post("m", b"{}", "application/json")
        await lean.aclose()
    assert server.connections == 2


async def test_statuses_and_failures_become_sink_errors() -> None:
    """5xx and 429 are retryable (with Retry-After), other 4xx permanent with the body; a
    dropped connection and a server that never answers are retryable."""
    async with scripted(
        b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n",
        b'HTTP/1.1 400 Bad\r\nContent-Length: 14\r\n\r\n{"msg":"nope"}',
        CLOSE,
        HANG,
        OK,
    ) as server:
        lean = client(server.url, timeout=0.5)
        with pytest.raises(RetryableSinkError, match="HTTP 503") as retryable:
            await lean.post("m", b"{}", "application/json")
        assert retryable.value.retry_after == 2.0
        with pytest.raises(PermanentSinkError, match="nope") as permanent:
            await lean.post("m", b"{}", "application/json")
        assert permanent.value.status == 400
        with pytest.raises(RetryableSinkError, match="unreachable"):
            await lean.post("m", b"{}", "application/json")
        with pytest.raises(RetryableSinkError, match="timed out"):
            await lean.post("m", b"{}", "application/json")
        assert (await lean.post("m", b"{}", "application/json")).status == 200
        await lean.aclose()


async def test_refused_connection_is_retryable() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    lean = client(f"http://127.0.0.1:{port}/")
    with pytest.raises(RetryableSinkError, match="unreachable"):
        await lean.post("m", b"{}", "application/json")


def test_env_proxy_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment sends the sink to httpx, unless NO_PROXY exempts the host."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    url = httpx.URL("https://comet.example.org/api/rest/v2/")
    assert not env_proxy_for(url)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert env_proxy_for(url)
    assert not env_proxy_for(httpx.URL("http://comet.example.org/"))
    monkeypatch.setenv("NO_PROXY", "example.org")
    assert not env_proxy_for(url)

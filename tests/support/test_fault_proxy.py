"""The latency and fault proxy that the sink tests and the benchmarks put in front of servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.fault_proxy import FaultProxy


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Path", self.path)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_proxy_forwards_requests_unchanged(echo_url: str) -> None:
    """Without faults the proxy passes method, path, body and response through."""
    with FaultProxy(echo_url) as proxy, httpx.Client(timeout=10) as client:
        response = client.post(f"{proxy.url}/a/b?x=1", content=b"payload")
    assert response.status_code == 200
    assert response.content == b"payload"
    assert response.headers["X-Path"] == "/a/b?x=1"
    assert proxy.stats.forwarded == 1


def test_proxy_scripted_failures_then_recovery(echo_url: str) -> None:
    """fail_next and throttle_next answer in order, then forwarding resumes."""
    with FaultProxy(echo_url) as proxy, httpx.Client(timeout=10) as client:
        proxy.fail_next(2, status=503)
        proxy.throttle_next(1, retry_after=1.5)
        statuses = [client.post(proxy.url, content=b"x") for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 200]
    assert statuses[2].headers["Retry-After"] == "1.5"
    assert proxy.stats.injected == {503: 2, 429: 1}


def test_proxy_down_window_drops_connections(echo_url: str) -> None:
    """While down, requests fail at the transport level; after go_up they pass again."""
    with FaultProxy(echo_url) as proxy, httpx.Client(timeout=10) as client:
        proxy.go_down()
        with pytest.raises(httpx.TransportError):
            client.post(proxy.url, content=b"x")
        proxy.go_up()
        assert client.post(proxy.url, content=b"x").status_code == 200
    assert proxy.stats.dropped == 1


def test_proxy_reports_unreachable_upstream_as_502() -> None:
    """A dead upstream becomes HTTP 502, which sinks treat as retryable."""
    with FaultProxy("http://127.0.0.1:9") as proxy, httpx.Client(timeout=10) as client:
        assert client.post(proxy.url, content=b"x").status_code == 502


def test_proxy_stop_is_idempotent(echo_url: str) -> None:
    """Stopping twice is harmless and the port is released."""
    proxy = FaultProxy(echo_url).start()
    proxy.stop()
    proxy.stop()
    with pytest.raises(httpx.TransportError), httpx.Client(timeout=2) as client:
        client.post(proxy.url, content=b"x")

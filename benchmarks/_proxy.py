"""The latency proxy in front of the MLflow server, in a process of its own.

``tests.support.fault_proxy.FaultProxy`` serves from a background thread of whoever starts it. The
contenders train in the benchmark process, and a proxy sharing their interpreter would take the GIL
from them, which real network latency never does; so the benchmark starts the proxy here, in a child
process, and talks to it only over TCP.

    python -m benchmarks._proxy --upstream http://127.0.0.1:5000 --port 5001 --latency 0.2
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time

__all__ = ["LatencyProxy"]


class LatencyProxy:
    """Starts ``python -m benchmarks._proxy`` and waits until it accepts connections."""

    def __init__(self, upstream: str, latency: float) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.upstream = upstream
        self.latency = latency
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> LatencyProxy:
        """Launch the proxy process; raise if it does not listen within ``timeout`` seconds."""
        command = [sys.executable, "-m", "benchmarks._proxy", "--upstream", self.upstream]
        command += ["--port", str(self.port), "--latency", str(self.latency)]
        self._process = subprocess.Popen(command, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("the latency proxy exited while starting")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the latency proxy did not listen within {timeout:.0f} s")

    def stop(self) -> None:
        """Terminate the proxy process."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    from tests.support.fault_proxy import FaultProxy

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    ns = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FaultProxy(ns.upstream, latency=ns.latency, port=ns.port):
        stop.wait()


if __name__ == "__main__":
    main()

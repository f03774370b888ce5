"""A real ``mlflow server`` on 127.0.0.1 for integration tests and benchmarks.

SQLite backend, artifacts proxied by the server itself (``mlflow-artifacts:/``) unless
``proxy_artifacts=False`` (then runs get a plain local path as artifact URI, which clients write
to directly), one worker and no job runner so it starts in seconds. ``stop()`` and ``start()``
may be called again on the same port and database, which is how tests simulate a tracking
server going away mid-run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["MlflowServer", "free_port", "mlflow_available"]

START_TIMEOUT = 90.0


def mlflow_available() -> bool:
    """Whether the ``mlflow`` package (server and client) is installed."""
    return importlib.util.find_spec("mlflow") is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """One ``mlflow server`` process; ``url`` is its tracking URI."""

    def __init__(
        self, root: Path, *, port: int | None = None, proxy_artifacts: bool = True
    ) -> None:
        self.root = root
        self.proxy_artifacts = proxy_artifacts
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts_dir = root / "artifacts"
        self.db_path = root / "mlflow.db"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = root / "server.log"

    def _command(self) -> list[str]:
        exe = Path(sys.executable).with_name("mlflow")
        launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
        return [
            *launcher,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.db_path}",
            *(
                [
                    "--default-artifact-root",
                    "mlflow-artifacts:/",
                    "--artifacts-destination",
                    str(self.artifacts_dir),
                ]
                if self.proxy_artifacts
                else ["--default-artifact-root", str(self.artifacts_dir), "--no-serve-artifacts"]
            ),
            "--workers",
            "1",
        ]

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until ``/health`` answers."""
        if self._process is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.pop("MLFLOW_TRACKING_URI", None)
        log = self._log_path.open("ab")
        self._process = subprocess.Popen(
            self._command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early; see {self._log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def cleanup(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def metric_history(client: Any, run_id: str | None, key: str) -> list[tuple[int, Any]]:
    """``(step, value)`` of one metric of a run, by step, read with MLflow's own client."""
    assert run_id is not None, "the sink never resolved its run"
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

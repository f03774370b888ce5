"""The servers and helpers the sink benchmarks share: MLflow and the Comet fake behind latency
proxies, each in a process of its own, and a launcher with a real run's bus."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from trainbus.bus._bus import Bus
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport
from trainbus.sinks.comet import CometSink
from trainbus.sinks.mlflow import MLflowSink
from trainbus.sinks.tensorboard import TensorBoardSink

__all__ = [
    "LATENCY_S",
    "WARMUP_STEPS",
    "NoOpSink",
    "RunLauncher",
    "Stage",
    "quiet",
    "thread_cpu_s",
]

LATENCY_S = 0.2
"""Seconds the proxies add to every request."""
WARMUP_STEPS = 20
"""Steps left out before a run's timed window."""


class NoOpSink(Sink):
    """Accepts everything and does nothing: what the bus, journal and runtime cost alone."""

    name = "no-op"

    async def write(self, batch: Sequence[Any]) -> None:
        return None


class RunLauncher:
    """The trainer's local launcher, with the bus a real run has: a journal on disk, cursors and
    a flush deadline at close (what is left stays in the journal, reported per sink), and
    retries capped at 2 s apart."""

    def __init__(self, run_dir: Path, close_deadline: float) -> None:
        self.run_dir = run_dir
        self.close_deadline = close_deadline
        self.loop_thread: int | None = None
        """``threading.get_ident()`` of the thread running the bus's loop (and every sink)."""
        self.report: Mapping[str, SinkReport] | None = None
        """Per sink, what was delivered and what is left, once the run closed."""

    @contextlib.asynccontextmanager
    async def open_run(self, trainer: Any) -> AsyncIterator[Bus]:
        bus = Bus(
            run_id=self.run_dir.name,
            journal_path=self.run_dir / "journal.tbj",
            cursor_dir=self.run_dir / "cursors",
            sinks=trainer.sinks,
            close_deadline=self.close_deadline,
            # Remote trackers come back within seconds; do not sleep a minute between tries.
            retry_policy=RetryPolicy(max_backoff=2.0),
        )
        self.loop_thread = threading.get_ident()
        async with bus:
            yield bus
        self.report = bus.report


def thread_cpu_s(ident: int | None) -> float:
    """CPU seconds another thread of this process has used so far (NaN where the platform has
    no per-thread CPU clock): how much of its time the bus's loop thread held the GIL, at most."""
    if ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return float("nan")
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


class _Child:
    """A helper server in its own process (so it never competes for this process's GIL)."""

    def __init__(self, *command: str) -> None:
        self.command = [sys.executable, *command]
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> _Child:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
        )
        assert self.process.stdout is not None  # we asked for a pipe
        self.url = self.process.stdout.readline().strip().rstrip("/")
        if not self.url.startswith("http"):
            raise RuntimeError(f"{self.command} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Stage:
    """The servers every training run shares: MLflow and the Comet fake, each behind a proxy
    adding 200 ms, all in other processes."""

    def __init__(self, root: Path) -> None:
        from tests.support.mlflow_server import MlflowServer

        self.root = root
        self.mlflow = MlflowServer(root / "mlflow")
        self.comet_key = "bench-key"
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Stage:
        self.mlflow.start()
        self.stack.callback(self.mlflow.stop)
        self.comet = self.stack.enter_context(
            _Child("-m", "tests.sinks.comet_fake", self.comet_key)
        )
        latency = ["--latency", str(LATENCY_S)]
        self.mlflow_proxy = self.stack.enter_context(
            _Child("-m", "tests.support.fault_proxy", "--upstream", self.mlflow.url, *latency)
        )
        self.comet_proxy = self.stack.enter_context(
            _Child("-m", "tests.support.fault_proxy", "--upstream", self.comet.url, *latency)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def comet_steps(self, key: str) -> list[int]:
        dump = httpx.get(f"{self.comet.url}/_fake/experiments", timeout=30).json()
        return sorted(step for name, step in dump[key]["metrics"] if name == "train/loss")

    def sinks(self, names: Sequence[str], run_dir: Path) -> list[Sink]:
        made: list[Sink] = []
        for name in names:
            if name == "no-op":
                made.append(NoOpSink())
            elif name == "tensorboard":
                made.append(TensorBoardSink(run_dir=run_dir, logging_dir=run_dir / "tb"))
            elif name == "mlflow":
                made.append(
                    MLflowSink(self.mlflow_proxy.url, run_dir=run_dir, experiment_name="bench")
                )
            elif name == "comet":
                made.append(
                    CometSink(
                        run_dir=run_dir,
                        api_key=self.comet_key,
                        url_override=self.comet_proxy.url + "/clientlib/",
                        workspace="bench",
                    )
                )
        return made


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield

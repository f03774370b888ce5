"""Sinks in a process of their own (``Sink.prefers_sink_process``, ``TRAINBUS_SINK_PROCESS``,
``Orchestrator(sink_process=)``).

A sink on the bus's event loop in the training process competes with the training thread for the
GIL, which costs little at a few scalars per step and a lot when a vendor SDK does per-point
Python work or a run logs hundreds of scalars (formatting, encoding and sending them). For the
sinks moved here the training process only journals; a child process (``python -m
trainbus.orchestrator._sink_child RUN_DIR --sink NAME ...``) rebuilds the run's ``report_to``
sinks from ``run.json`` and the environment, as ``trainbus sync`` does, follows the journal as it
grows (``trainbus.bus._follow``) and delivers with the same runners, retries and cursors.

The parent holds the child's stdin open for the run; a ``flush`` line when the training's last
step is out (``Bus.begin_flush``) tells the child to deliver what it has without waiting for the
batch timers, and a ``done`` line once the journal holds the whole run (or the pipe closing when
the parent dies) tells it to deliver the rest within the flush deadline and exit. The child
writes its sinks' reports to ``sink-host.json`` in the run directory and says so on a pipe of
its own: the run waits for delivery, not for the interpreter's exit, which is reaped in the
background. What the child could not deliver stays in the journal for ``trainbus sync``. Sinks
passed as objects (``sinks=[...]``) stay in the training process: only sinks a process can
rebuild by name move. ``Bus.stats()`` in the training process does not see the moved ones: the
child writes their ``stats()`` to ``sink-host.stats.json`` at most every ``STATS_EVERY`` seconds and
once at the end, and ``read_live_stats`` is how the training process reports them (its metrics
exporters).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Final

import anyio
import anyio.to_thread
import msgspec
import structlog

from trainbus.bus._stats import SinkReport, SinkStats
from trainbus.orchestrator.rundir import RunDir

__all__ = [
    "DONE",
    "FLUSH",
    "Handoff",
    "NICENESS",
    "REPORTED",
    "REPORT_NAME",
    "STATS_EVERY",
    "STATS_NAME",
    "SinkHost",
    "read_live_stats",
    "read_reports",
]

log = structlog.get_logger(__name__)

REPORT_NAME: Final = "sink-host.json"
STATS_NAME: Final = "sink-host.stats.json"
STATS_EVERY: Final = 1.0
"""Seconds between two writes of the child's sink stats: how stale the parent's figures may be."""
DONE: Final = b"done\n"
"""What the parent writes on the child's stdin when the journal is complete."""
FLUSH: Final = b"flush\n"
"""What the parent writes on the child's stdin when the run's end is near (``Bus.begin_flush``)."""
NICENESS: Final = 10
"""How much the sink process lowers its CPU priority (``os.nice``), and with it every process its
SDKs start: where cores are scarce, training gets them first and the sinks catch up when they
are free (what is still behind at the end is delivered within the flush deadline, or by sync)."""
_EXIT_GRACE: Final = 30.0
"""Seconds beyond the flush deadline the parent waits for the child (closing sinks, the report),
and then for its exit once it reported."""
REPORTED: Final = b"reported\n"
"""What the child writes on its report pipe once ``sink-host.json`` is written."""
_LOOK_EVERY: Final = 0.5
"""Seconds between two looks at whether a child that has not reported yet has exited."""


class Handoff(msgspec.Struct, kw_only=True):
    """The first line the parent writes on the child's stdin."""

    env: dict[str, str]
    """The environment the sinks are built from (``from_env``), as in the training process."""
    argv: list[str] = []
    """The training process's ``sys.argv``: the child takes it as its own, so that an SDK that
    records the program it runs in (MLflow's ``mlflow.source.*`` tags and the git commit found
    from the script's path, W&B's program) records the training script, as it does in process."""


class SinkHost:
    """The parent's handle on the child process that runs some of the run's sinks."""

    def __init__(
        self,
        run_dir: RunDir,
        names: Sequence[str],
        process: subprocess.Popen[bytes],
        reported: int | None = None,
    ):
        """``reported``: the read end of the pipe the child says it has reported on (``None``:
        wait for its exit instead)."""
        self.run_dir = run_dir
        self.names = list(names)
        self.process = process
        self._reported = reported

    @classmethod
    def start(
        cls, run_dir: RunDir, names: Sequence[str], *, env: Mapping[str, str], deadline: float
    ) -> SinkHost:
        """Start the child for the sinks ``names`` of the run in ``run_dir``."""
        (run_dir.path / REPORT_NAME).unlink(missing_ok=True)
        (run_dir.path / STATS_NAME).unlink(missing_ok=True)
        command = [sys.executable, "-m", "trainbus.orchestrator._sink_child", str(run_dir.path)]
        for name in names:
            command += ["--sink", name]
        reported, report_end = os.pipe()
        command += ["--deadline", repr(deadline), "--reported-fd", str(report_end)]
        # A session of its own: a Ctrl-C at the terminal interrupts training, not the delivery
        # of what training logged (the closed pipe tells the child to finish).
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, start_new_session=True, pass_fds=(report_end,)
            )
        except BaseException:
            os.close(reported)
            raise
        finally:
            os.close(report_end)  # the child's now: its exit ends the pipe
        # The sinks' environment goes down the pipe, never onto disk or a command line: it holds
        # API keys and tokens. The pipe then stays open until the run ends.
        handoff = Handoff(env=dict(env), argv=list(sys.argv))
        try:
            assert process.stdin is not None  # stdin=PIPE
            process.stdin.write(msgspec.json.encode(handoff) + b"\n")
            process.stdin.flush()
        except BaseException:
            os.close(reported)
            _kill(process)
            raise
        log.info("sink_process_started", pid=process.pid, sinks=list(names))
        return cls(run_dir, names, process, reported)

    def begin_flush(self) -> None:
        """Tell the child to deliver what it has now (``Bus.begin_flush``: the end is near)."""
        self._tell(FLUSH)

    def journal_complete(self) -> None:
        """Tell the child the journal holds the whole run: it delivers the rest and exits.

        Said as soon as the bus's last drain wrote the journal, so the child's final delivery
        runs beside the training process's own sinks rather than after them; once is enough.
        """
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return
        # "done" first: a process forked meanwhile (a DataLoader worker) holds a copy of the
        # pipe, so closing ours alone need not reach the child as end of file.
        with contextlib.suppress(OSError):  # a child that died took the pipe's far end along
            stdin.write(DONE)
            stdin.close()

    def _tell(self, line: bytes) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(line)
                stdin.flush()

    async def finish(self, deadline: float) -> dict[str, SinkReport]:
        """Tell the child the journal is complete, wait for its reports, and return them.

        The wait ends when the child says its reports are written (or exits); its interpreter's
        own exit is waited for in the background. A child that overruns ``deadline`` plus a
        grace period is killed; its sinks' cursors say what they delivered, and ``trainbus
        sync`` delivers the rest.
        """
        process = self.process
        self.journal_complete()
        limit = deadline + _EXIT_GRACE if math.isfinite(deadline) else None
        reported = await anyio.to_thread.run_sync(
            self._wait_reported, limit, abandon_on_cancel=False
        )
        if not reported:
            log.error("sink_process_overran", pid=process.pid, waited_s=limit)
            await anyio.to_thread.run_sync(_kill, process)
        if process.poll() is None:
            threading.Thread(
                target=_reap, args=(process,), name="trainbus sink process reaper", daemon=True
            ).start()
        elif process.returncode != 0:
            log.error("sink_process_failed", pid=process.pid, returncode=process.returncode)
        reports = read_reports(self.run_dir)
        missing = [name for name in self.names if name not in reports]
        if missing:
            log.warning(
                "sink_process_left_no_report",
                sinks=missing,
                note="their cursors say what they delivered; the rest is in the journal",
                hint=f"trainbus sync {self.run_dir.path}",
            )
        return reports

    def _wait_reported(self, limit: float | None) -> bool:
        """Block until the child has reported or exited; ``False`` when ``limit`` seconds passed
        first. Looks at the process too: a process the child started may hold the pipe's end."""
        reported, self._reported = self._reported, None
        end = None if limit is None else time.monotonic() + limit
        try:
            while True:
                left = _LOOK_EVERY if end is None else min(_LOOK_EVERY, end - time.monotonic())
                if left <= 0:
                    return False
                if reported is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(left)
                        return True
                    continue
                if select.select([reported], [], [], left)[0] or self.process.poll() is not None:
                    return True  # a line or the end of the pipe: reported, or gone
        finally:
            if reported is not None:
                os.close(reported)


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for a child that has reported to exit (its interpreter's own shutdown), killing it
    past the grace period, so that no zombie is left behind."""
    try:
        process.wait(_EXIT_GRACE)
    except subprocess.TimeoutExpired:
        log.error("sink_process_overran", pid=process.pid, waited_s=_EXIT_GRACE)
        _kill(process)
        return
    if process.returncode != 0:
        log.error("sink_process_failed", pid=process.pid, returncode=process.returncode)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the child and whatever it started (its own session), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def read_reports(run_dir: RunDir) -> dict[str, SinkReport]:
    """The reports the child left, by sink name (none when it did not get that far)."""
    path = run_dir.path / REPORT_NAME
    try:
        reports = msgspec.json.decode(path.read_bytes(), type=list[SinkReport])
    except (FileNotFoundError, msgspec.DecodeError):
        return {}
    return {report.name: report for report in reports}


def read_live_stats(run_dir: RunDir) -> list[SinkStats]:
    """The child's sinks as it last described them (none before its first write)."""
    try:
        return msgspec.json.decode((run_dir.path / STATS_NAME).read_bytes(), type=list[SinkStats])
    except (FileNotFoundError, msgspec.DecodeError):
        return []

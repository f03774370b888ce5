"""The sink process itself (see ``trainbus.orchestrator.sink_host``): follow a run's journal into
sinks.

Started by the training process as ``python -m trainbus.orchestrator._sink_child RUN_DIR --sink NAME
...`` with the sinks' environment and the training process's ``argv`` as one JSON line on stdin
(``Handoff``); runs until the parent writes ``done`` (or the pipe ends: the parent died), then
delivers the rest within ``--deadline`` seconds, writes the reports and says so on
``--reported-fd``; a ``flush`` line before that makes the sinks send what they hold without
waiting for their batch timers. Kept out of the package's imports so that ``-m`` runs it fresh.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
import structlog

from trainbus.bus._files import replace_file
from trainbus.bus._follow import follow
from trainbus.bus._stats import SinkReport, SinkStats
from trainbus.orchestrator.logging import configure_logging
from trainbus.orchestrator.rundir import RunDir, find_run_dir
from trainbus.orchestrator.sink_host import (
    DONE,
    FLUSH,
    NICENESS,
    REPORT_NAME,
    REPORTED,
    STATS_EVERY,
    STATS_NAME,
    Handoff,
)
from trainbus.orchestrator.sync import rebuild_sinks

log = structlog.get_logger(__name__)


def _wait_for_done(
    done: anyio.Event, flush: anyio.Event, token: anyio.lowlevel.EventLoopToken
) -> None:
    """Read stdin until the parent says "done" or the pipe ends (the parent died), then set
    ``flush`` and ``done`` on the loop; a "flush" line on the way sets ``flush``."""
    try:
        for line in sys.stdin.buffer:
            if line == DONE:
                break
            if line == FLUSH:
                with contextlib.suppress(RuntimeError):
                    anyio.from_thread.run_sync(flush.set, token=token)
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is gone already: nothing to tell
            anyio.from_thread.run_sync(flush.set, token=token)
            anyio.from_thread.run_sync(done.set, token=token)


class _StatsFile:
    """Writes the sinks' stats for the training process, at most every ``STATS_EVERY`` seconds
    (the last call, at the end, always)."""

    def __init__(self, run_dir: RunDir) -> None:
        self._path = run_dir.path / STATS_NAME
        self._last = -math.inf
        self._final: list[SinkStats] | None = None

    def __call__(self, stats: list[SinkStats]) -> None:
        now = time.monotonic()
        self._final = stats
        if now - self._last >= STATS_EVERY:
            self._last = now
            self.write()

    def write(self) -> None:
        if self._final is None:
            return
        try:  # owner-only: a last error may quote a server's answer
            replace_file(self._path, msgspec.json.encode(self._final), mode=0o600)
        except OSError as exc:  # a full disk: the figures are for watching, delivery goes on
            log.warning("sink_stats_not_written", path=str(self._path), error=str(exc))


async def _host(
    run_dir: RunDir, names: Sequence[str], deadline: float, env: Mapping[str, str]
) -> list[SinkReport]:
    # The training process that wrote this run.json started us: its own classes are trusted.
    sinks = rebuild_sinks(run_dir, env=env, only=names, allow_classes=True)
    done, flush = anyio.Event(), anyio.Event()
    token = anyio.lowlevel.current_token()
    threading.Thread(target=_wait_for_done, args=(done, flush, token), daemon=True).start()
    log.info("sink_process_following", run_dir=str(run_dir.path), sinks=list(names))
    stats = _StatsFile(run_dir)
    reports = await follow(
        run_dir.journal_path,
        sinks,
        cursor_dir=run_dir.cursor_dir,
        done=done,
        flush=flush,
        deadline=deadline,
        on_stats=stats,
    )
    stats.write()  # the final figures, whatever the throttle said
    return list(reports.values())


def main(argv: Sequence[str] | None = None) -> int:
    """The child: follow RUN_DIR's journal into the named sinks until the parent is done."""
    parser = argparse.ArgumentParser(prog="python -m trainbus.orchestrator._sink_child")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sink", action="append", required=True, help="a sink of the run")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds to flush at the end")
    parser.add_argument(
        "--reported-fd", type=int, default=None, help="a pipe to say the reports are written on"
    )
    options = parser.parse_args(argv)
    configure_logging()
    with contextlib.suppress(OSError):  # a platform without nice: same priority as training
        os.nice(NICENESS)
    handoff = msgspec.json.decode(sys.stdin.buffer.readline() or b'{"env": {}}', type=Handoff)
    if handoff.argv:
        sys.argv = handoff.argv  # the SDKs describe the training script, not this module
    run_dir = find_run_dir(options.run_dir)
    reports = anyio.run(_host, run_dir, options.sink, options.deadline, handoff.env)
    # Owner-only: a sink's last error may quote a server's answer.
    replace_file(run_dir.path / REPORT_NAME, msgspec.json.encode(reports), mode=0o600)
    if options.reported_fd is not None:  # delivery is over: the parent need not wait for our exit
        with contextlib.suppress(OSError):
            os.write(options.reported_fd, REPORTED)
            os.close(options.reported_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())

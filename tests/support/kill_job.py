"""SIGKILL a whole training job: its sink process's session, then the trainer's process group.

The sink process (``orchestrator/sink_host.py``) runs in a session of its own, so that it
outlives a killed trainer and delivers what was journaled; a test of a job lost whole (its
machine or container going down) kills that session too, first, so that the child cannot see
the trainer go and finish its sinks cleanly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from trainbus.orchestrator.rundir import find_run_dir

__all__ = ["kill_job"]


def kill_job(proc: subprocess.Popen[str], output_dir: Path, *, guard_s: float = 30.0) -> None:
    """Kill the job ``proc`` (started with ``start_new_session=True``) writing its runs under
    ``output_dir``, and wait until its processes are gone (``guard_s`` guards a hang)."""
    try:
        sink_pid = find_run_dir(output_dir).read_record().sink_pid
    except (ValueError, OSError):
        sink_pid = None
    if sink_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sink_pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=guard_s)
    if sink_pid is not None:  # not our child: poll until it is gone
        give_up = time.monotonic() + guard_s
        while _alive(sink_pid) and time.monotonic() < give_up:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

"""Run a test module's worker half under ``torchrun``, bounded in time and stopped whole.

The distributed tests start ``python -m torch.distributed.run`` on the loopback interface with
the local launcher (no orchestrator), the repository on ``PYTHONPATH``, and one thread per rank.
The launcher and its workers get a process group of their own, so a run that hangs past the
timeout is killed with every rank, and nothing it started outlives the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = ["ROOT", "TIMEOUT_S", "run_ranks"]

ROOT: Final = Path(__file__).resolve().parents[2]
"""The repository root: what the workers import ``tests`` and ``trainbus`` from."""
TIMEOUT_S: Final = 180
"""How long a two-rank run on a busy two-core machine may take before it counts as hung."""


def run_ranks(
    module: str,
    out: Path,
    *,
    ranks: int = 2,
    timeout_s: float = TIMEOUT_S,
    rendezvous: Sequence[str] = ("--standalone",),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=<ranks> -m <module> <out>``; its output, or an
    ``AssertionError`` with the end of its stderr when it did not finish in ``timeout_s``.

    ``rendezvous`` replaces ``--standalone`` (``--rdzv-id``, ``--master_port``, ...); ``env``
    adds to or overrides the workers' environment."""
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "TRAINBUS_LAUNCHER": "local",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc_per_node={ranks}",
        "-m",
        module,
        str(out),
    ]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"torchrun did not finish in {timeout_s} s: {stderr[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

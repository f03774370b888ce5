"""Run a test module's worker half as a two-node ``torchrun`` job simulated on one machine.

Each "node" is its own ``torchrun --nnodes 2 --nproc_per_node 1`` launch, in a process group of
its own, meeting the other over the loopback interface: through a c10d rendezvous (how a real
multi-node job usually meets) or torchrun's static one (``--master-addr``/``--node-rank``, which
fixes which launch is node 0). Each launch gets its own environment on top of the test's, which
is how a test gives each node its own "local disk". Both are bounded by one deadline; past it
both are killed with their workers, so a hang fails the test instead of outliving it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal

from tests.support.torchrun import ROOT

__all__ = ["GUARD_S", "Launch", "free_port", "run_two_nodes"]

GUARD_S: Final = 300
"""How long a two-node job on a busy two-core machine may take before it counts as hung (a
loaded machine takes over a minute just to import torch twice), far below the process group's
timeout (30 minutes), which is how long a hang would otherwise last."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Launch:
    """One node's finished ``torchrun``: its exit code and output."""

    def __init__(self, node: int, returncode: int, stdout: str, stderr: str) -> None:
        self.node = node
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Launch(node={self.node}, returncode={self.returncode})"


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, read from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a launch with its workers: torchrun starts each worker in a session of its own,
    so killing the launch's process group alone would leave them running."""
    if proc.poll() is None:
        for pid in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _command(
    node: int, port: int, rendezvous: Literal["c10d", "static"], module: str, argv: Sequence[str]
) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    if rendezvous == "c10d":
        command += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=two-nodes-{port}",
        ]
    else:
        command += ["--master-addr=127.0.0.1", f"--master-port={port}", f"--node-rank={node}"]
    return [*command, "-m", module, *argv]


def run_two_nodes(
    module: str,
    argv: Sequence[str],
    logs: Path,
    *,
    node_env: Sequence[Mapping[str, str]] = ({}, {}),
    rendezvous: Literal["c10d", "static"] = "static",
    timeout_s: float = GUARD_S,
) -> list[Launch]:
    """Both nodes' launches of ``-m module *argv``, once both have exited.

    Args:
        module: the worker module each rank runs.
        argv: its arguments, the same on both nodes.
        logs: a directory for each launch's output (``node<i>.out``/``.err``).
        node_env: variables for node 0's launch, then node 1's.
        rendezvous: ``"c10d"`` (``--rdzv-endpoint``; torchrun then numbers the nodes itself) or
            ``"static"`` (``--master-addr``/``--node-rank``: the first launch is node 0).
        timeout_s: the hang guard for the whole job.

    Raises:
        AssertionError: the job did not end within ``timeout_s`` (both launches are killed).
    """
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    base = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "TRAINBUS_LAUNCHER": "local",
        "PYTHONPATH": str(ROOT),
    }
    procs = []
    for node in (0, 1):
        out = (logs / f"node{node}.out").open("w")
        err = (logs / f"node{node}.err").open("w")
        with out, err:  # the child keeps its own descriptors
            procs.append(
                subprocess.Popen(
                    _command(node, port, rendezvous, module, argv),
                    env={**base, **node_env[node]},
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            )
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        for proc in procs:
            _kill_tree(proc)
        tails = [(logs / f"node{n}.err").read_text()[-3000:] for n in (0, 1)]
        raise AssertionError(
            f"the two-node job did not end in {timeout_s} s:\n{tails[0]}\n---\n{tails[1]}"
        ) from None
    return [
        Launch(
            node,
            proc.returncode,
            (logs / f"node{node}.out").read_text(),
            (logs / f"node{node}.err").read_text(),
        )
        for node, proc in enumerate(procs)
    ]

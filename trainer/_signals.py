"""Graceful stop on SIGTERM and SIGINT while ``Trainer.train()`` runs on the main thread.

Schedulers (Slurm, Kubernetes, torchrun) send SIGTERM before they kill, and a user stops a run
with Ctrl-C; either should cost at most the step in progress, not the run. For the duration of
``train()`` this module replaces the process's handlers for the two signals:

* the **first** signal only records itself (``on_first(signum)``); the training loop reads that
  record at the end of the optimizer step, agrees the stop and the final save with the other
  ranks, saves, and the run closes with status ``killed`` after the sinks' flush deadline;
* a **second** signal ends the process at once, as that signal's default action would (no
  cleanup, no flush: the journal's framed records survive, and its reader truncates a torn tail).

The previous handlers come back when ``train()`` returns. A signal the process ignores
(``SIG_IGN``, e.g. SIGINT under ``nohup``) stays ignored. Off the main thread nothing is
installed: Python delivers signals to the main thread only, and an embedding host
(``train_async()``) owns them; it stops a run with ``Trainer.request_stop()``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final

__all__ = ["STOP_SIGNALS", "exit_code", "stop_on_signals"]

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's conventional exit status of a process ended by ``signum`` (143, 130)."""
    return 128 + signum


def _die(signum: int) -> None:
    """End the process now, by ``signum``'s default action (the parent sees that signal)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_on_signals(on_first: Callable[[int], None]) -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGINT calls ``on_first``; the second ends the process.

    ``on_first`` runs in the signal handler, between two bytecodes of the main thread: it must
    only record the request (the training loop acts on it at a safe point).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if received:
            _die(signum)
        received.append(signum)
        on_first(signum)

    previous: dict[int, signal._HANDLER] = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        # None: a handler installed outside Python, which cannot be put back; the default can.
        previous[signum] = signal.SIG_DFL if current is None else current
        signal.signal(signum, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

"""One call's run for the transformers bridge: an ``Orchestrator`` served from a daemon thread.

``transformers.Trainer`` trains on the caller's thread and tells its callbacks what happens, one
hook at a time; it never hands over its loop. So the bridge does what ``Trainer.train()`` does for
our own trainer (``trainbus.trainer._launcher``): the run's event loop (bus, journal, sink tasks)
runs in a daemon thread of its own, the hooks publish into the bus from the training thread
without waiting on any sink, and closing the run flushes the sinks under the orchestrator's
flush deadline, or abandons a loop a sink blocks. The thread is the launcher's ``_RunLoop``, so
the bridge and our trainer close a run by the same rules.

A run the process leaves open (training raised out of ``train()``, or the interpreter exits in
the middle of one) is closed by ``close_at_exit``: the uncaught exception, when Python recorded
one, marks it ``failed`` (``killed`` for ``KeyboardInterrupt``).
"""

from __future__ import annotations

import atexit
import sys
import weakref
from typing import Any, cast

from trainbus.bus._bus import Bus
from trainbus.bus._events import RunFinished, RunStatus
from trainbus.orchestrator.run import Orchestrator
from trainbus.trainer._launcher import _RunLoop

__all__ = ["BridgeRun", "close_at_exit", "status_of"]


class BridgeRun:
    """An open run of ``orchestrator``: its bus, until ``close``."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        # The orchestrator's ``open_run`` reads nothing from the trainer it is handed: the run
        # was configured when the orchestrator was built.
        self._loop = _RunLoop(orchestrator, cast(Any, None))
        self.orchestrator = orchestrator
        self.bus: Bus = self._loop.open()
        self.closed = False

    def finish(
        self, status: RunStatus, *, step: int, epoch: float, error: BaseException | None = None
    ) -> None:
        """Publish ``RunFinished(status)`` and close the run (flush, bounded by the deadline).

        Args:
            status: how the call ended.
            step: the ``global_step`` the event carries.
            epoch: the ``epoch`` the event carries.
            error: the exception that ended it, if any: named in the event and in ``run.json``.
        """
        if self.closed:
            return
        self.closed = True
        reason = None if error is None else f"{type(error).__name__}: {error}"
        try:
            self.bus.emit(RunFinished, global_step=step, epoch=epoch, status=status, error=reason)
        finally:
            exc_info = (None, None, None) if error is None else (type(error), error, None)
            self._loop.close(exc_info)


def status_of(error: BaseException | None) -> RunStatus:
    """The status a run gets when ``error`` ended it (``None``: it was not an exception)."""
    if isinstance(error, KeyboardInterrupt):
        return "killed"
    return "completed" if error is None else "failed"


_open: weakref.WeakSet[Any] = weakref.WeakSet()
"""Owners of a run still open; ``_close_all`` closes their runs at interpreter exit."""


def close_at_exit(owner: Any) -> None:
    """Have ``owner.close_open_run(error)`` called at interpreter exit while it keeps a run open.

    ``error`` is the exception that ends the program, when Python recorded one
    (``sys.last_value``, set for an uncaught exception before ``atexit`` handlers run), else a
    ``SystemExit`` saying the process exited during the call.
    """
    _open.add(owner)


def _close_all() -> None:
    error = getattr(sys, "last_value", None)
    for owner in list(_open):
        owner.close_open_run(
            error if isinstance(error, BaseException) else None,
        )


atexit.register(_close_all)

"""How a ``Trainer`` gets the bus of its run without importing the orchestrator.

The seam is one method: a ``Launcher`` opens the bus of one run of a trainer, as an async context
manager (journal, sinks and run directory on entry; flushed and closed on exit). Everything else
is the trainer's and written once here: ``launch_blocking`` (``train()``: the bus's loop in a
daemon thread of its own, training on the caller's thread) and ``launch_async``
(``train_async()``: the bus on the caller's loop, training in a worker thread).

Which launcher a call uses, first match wins:

1. the one passed to the call (``Orchestrator.train`` hands over itself, and with it its open bus);
2. ``Trainer(launcher=...)`` (``trainbus train`` hands over the orchestrator it prepared);
3. the entry point named by ``$TRAINBUS_LAUNCHER`` (default ``default``) in the group
   ``trainbus.launchers``; the orchestrator registers ``default`` there;
4. ``LocalLauncher``: a bus with no journal and no sinks, when ``TRAINBUS_LAUNCHER=local`` or no
   entry point is registered (a checkout that was never installed).

The local launcher cannot honour ``report_to``, and never ignores it silently: integrations named
explicitly (``report_to=["tensorboard"]``) are an error before training starts, and the default
``"all"`` is one warning per trainer (``report_to="none"`` says nothing was asked for).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractAsyncContextManager
from importlib.metadata import entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import anyio
import structlog

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._outbox import CallSoon, loop_call_soon
from trainbus.bus._sink import Sink
from trainbus.bus._worker import run_in_worker_thread

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "Launcher",
    "LocalLauncher",
    "launch_async",
    "launch_blocking",
    "resolve_launcher",
]

logger = structlog.get_logger(__name__)

ENTRY_POINT_GROUP: Final = "trainbus.launchers"
ENV_VAR: Final = "TRAINBUS_LAUNCHER"

T = TypeVar("T")


@runtime_checkable
class Launcher(Protocol):
    """Opens the bus of one run of a trainer: the one thing the trainer needs from outside."""

    def open_run(self, trainer: Trainer) -> AbstractAsyncContextManager[Bus]:
        """The run's bus, open inside ``async with``; closing it flushes the sinks.

        ``trainer`` supplies what the run needs (``args.output_dir``, ``args.report_to``, its own
        ``sinks``). Entered on the event loop that will serve the bus. The bus's ``context``
        (``trainbus.bus._run_context``) tells the trainer the resolved ``report_to``, whether a
        sink wants the final model, and whether the call continues a run already started.
        """
        ...


_CLOSE_CHECK: Final = 0.2
"""Seconds between two looks at a close that takes longer than the close deadline."""

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class _RunLoop:
    """A run's bus, open on an event loop in a daemon thread; closed from the caller's thread.

    Why not anyio's blocking portal: its calls wait for the loop to answer, and its thread is
    joined at exit, so a sink that blocks the loop would hang the close and the process. Here the
    close is asked with the loop's thread-safe ``call_soon`` (which never waits), it is bounded
    by the bus's close deadline once the bus's watchdog finds the loop blocked
    (``Bus.abandon``), and the daemon thread never keeps the process alive.

    The loop runs in a copy of the caller's context variables, so the sinks see what the
    caller's thread sees (structlog's bound values, a Flyte task's context), as they do when
    ``train_async()`` opens the run on the caller's own loop.
    """

    def __init__(self, launcher: Launcher, trainer: Trainer) -> None:
        self._open_run = functools.partial(launcher.open_run, trainer)
        self._entered: Future[tuple[Bus, CallSoon, anyio.Event]] = Future()
        self._closed: Future[bool | None] = Future()
        self._exc_info: ExcInfo = (None, None, None)
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run_loop,),
            name="trainbus bus loop",
            daemon=True,
        )

    def open(self) -> Bus:
        """Start the loop's thread and return the run's bus once it is open."""
        self._thread.start()
        return self._entered.result()[0]

    def close(self, exc_info: ExcInfo) -> bool | None:
        """Close the run (``exc_info`` as ``__exit__`` got it); whether to suppress the error."""
        bus, call_soon, release = self._entered.result()
        self._exc_info = exc_info
        call_soon(release.set)
        asked = time.monotonic()
        while True:
            try:
                suppress = self._closed.result(timeout=_CLOSE_CHECK)
            except FutureTimeout:
                if bus.loop_stalled and time.monotonic() - asked >= bus.close_deadline:
                    bus.abandon(
                        f"the close deadline ({bus.close_deadline:g} s) passed while a sink "
                        "blocked the event loop"
                    )
                    return None
                continue
            self._thread.join()
            return suppress

    def _run_loop(self) -> None:
        try:
            self._closed.set_result(anyio.run(self._serve))
        except BaseException as exc:  # the caller's thread re-raises it
            if not self._entered.done():
                self._entered.set_exception(exc)
            self._closed.set_exception(exc)

    async def _serve(self) -> bool | None:
        release = anyio.Event()
        run = self._open_run()
        bus = await run.__aenter__()  # the same task enters and exits (the bus's task group)
        self._entered.set_result((bus, loop_call_soon(), release))
        try:
            await release.wait()
        finally:
            suppress = await run.__aexit__(*self._exc_info)
        return suppress


def launch_blocking(launcher: Launcher, trainer: Trainer, work: Callable[[Bus], T]) -> T:
    """Run ``work(bus)`` on this thread while the bus's loop runs in a daemon thread.

    Training keeps the caller's thread (signals, debuggers and the CUDA context stay where users
    expect them); the journal and the sinks run on the loop's thread. Closing is bounded even
    when a sink blocks that loop: past the bus's close deadline the journal is closed from here,
    what the sinks did not acknowledge is reported as undelivered (it stays in the journal for
    ``trainbus sync``), and the loop's thread is left behind without keeping the process alive.
    """
    run = _RunLoop(launcher, trainer)
    bus = run.open()
    try:
        result = work(bus)
    except BaseException as exc:
        if not run.close((type(exc), exc, exc.__traceback__)):
            raise
        return None  # type: ignore[return-value]  # suppressed, as a ``with`` block would
    run.close((None, None, None))
    return result


async def launch_async(launcher: Launcher, trainer: Trainer, work: Callable[[Bus], T]) -> T:
    """Open the bus on the running loop and run ``work(bus)`` in a worker thread.

    The host application's loop stays responsive. Cancelling the caller asks the training to stop
    after its current step (``trainer.request_stop()``) and waits for the thread, so the run never
    closes under a live training loop. A sink that blocks the loop blocks the host's loop too:
    training and the journal go on (the bus's watchdog journals and names the sink), but the
    close, which runs on that loop, waits for the sink; only ``launch_blocking`` owns its loop and
    can leave it behind.
    """
    async with launcher.open_run(trainer) as bus:
        return await run_in_worker_thread(
            functools.partial(work, bus), on_cancel=trainer.request_stop
        )


_warned: weakref.WeakSet[Any] = weakref.WeakSet()
"""Trainers already told that ``report_to="all"`` has no sinks here: one warning each."""


def _check_report_to(trainer: Trainer, reason: str) -> None:
    """Refuse integrations the local launcher cannot start; warn once under ``"all"``."""
    report_to = trainer.args.report_to
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if names in ([], ["none"]):
        return
    if names != ["all"]:
        raise ConfigurationError(
            f"report_to={names!r} needs the trainbus orchestrator to start those sinks, but "
            f"{reason}; install trainbus (pip install -e .) or set report_to='none'"
        )
    if trainer not in _warned:
        _warned.add(trainer)
        logger.warning(
            "report_to_not_honoured",
            report_to="all",
            reason=reason,
            consequence="no sinks, no journal and no run directory for this trainer",
            hint="install trainbus (pip install -e .) or set report_to='none'",
        )


class LocalLauncher:
    """A bus with no journal: control callbacks and in-process sinks only.

    ``sinks`` (none by default) join every run's bus, with the trainer's own ``Trainer(sinks=...)``:
    in-process consumers such as a test's ``RecordingSink``. ``reason`` says in the ``report_to``
    error or warning why no orchestrator runs this trainer.
    """

    def __init__(
        self,
        *,
        sinks: Sequence[Sink] = (),
        reason: str = "the trainer was given LocalLauncher()",
    ) -> None:
        self.sinks = tuple(sinks)
        self.reason = reason

    def open_run(self, trainer: Trainer) -> AbstractAsyncContextManager[Bus]:
        """A bus for ``trainer``'s sinks and ours; ``report_to`` is checked first, here."""
        _check_report_to(trainer, self.reason)
        sinks = [*self.sinks, *trainer.sinks]
        bus = Bus(run_id=uuid.uuid4().hex, rank=trainer.args.process_index, sinks=sinks)
        # No integration runs here, whatever report_to asked for; the final model is still
        # written when one of these sinks wants it (the bus's default context says so).
        bus.context = dataclasses.replace(bus.context, report_to=())
        return bus


def resolve_launcher() -> Launcher:
    """The launcher ``$TRAINBUS_LAUNCHER`` names (``default`` when unset); local as the fallback."""
    wanted = os.environ.get(ENV_VAR) or "default"
    if wanted == "local":
        return LocalLauncher(reason=f"{ENV_VAR}=local selects the local launcher")
    found = entry_points(group=ENTRY_POINT_GROUP, name=wanted)
    if not found:
        if wanted != "default":
            raise ConfigurationError(
                f"{ENV_VAR}={wanted!r} names no launcher; expected 'local' or one registered under "
                f"the entry-point group {ENTRY_POINT_GROUP!r}"
            )
        return LocalLauncher(
            reason=f"no launcher is registered under the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    entry = next(iter(found))
    try:
        loaded: Any = entry.load()
    except (ImportError, AttributeError) as exc:
        # Said here whatever report_to asks for: even report_to="none" loses the run directory.
        logger.warning("launcher_unavailable", launcher=entry.value, error=str(exc))
        return LocalLauncher(reason=f"the launcher {entry.value!r} does not import ({exc})")
    launcher = loaded() if isinstance(loaded, type) else loaded
    if not isinstance(launcher, Launcher):
        raise ConfigurationError(
            f"the launcher {entry.value!r} registered as {wanted!r} has no open_run(trainer) method"
        )
    return launcher

"""How a ``Trainer`` gets the bus of its run without importing the orchestrator.

The seam is one method: a ``Launcher`` opens the bus of one run of a trainer, as an async context
manager (journal, sinks and run directory on entry; flushed and closed on exit). Everything else
is the trainer's and written once here: ``launch_blocking`` (``train()``: the bus's loop in a
blocking-portal thread, training on the caller's thread) and ``launch_async`` (``train_async()``:
the bus on the caller's loop, training in a worker thread).

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

import functools
import os
import uuid
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import anyio.from_thread
import structlog

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
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
        ``sinks``). Entered on the event loop that will serve the bus.
        """
        ...


def launch_blocking(launcher: Launcher, trainer: Trainer, work: Callable[[Bus], T]) -> T:
    """Run ``work(bus)`` on this thread while the bus's loop runs in a blocking-portal thread.

    Training keeps the caller's thread (signals, debuggers and the CUDA context stay where users
    expect them); the journal and the sinks run on the portal's loop.
    """
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(launcher.open_run(trainer)) as bus,
    ):
        return work(bus)


async def launch_async(launcher: Launcher, trainer: Trainer, work: Callable[[Bus], T]) -> T:
    """Open the bus on the running loop and run ``work(bus)`` in a worker thread.

    The host application's loop stays responsive. Cancelling the caller asks the training to stop
    after its current step (``trainer.request_stop()``) and waits for the thread, so the run never
    closes under a live training loop.
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
        return Bus(run_id=uuid.uuid4().hex, rank=trainer.args.process_index, sinks=sinks)


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

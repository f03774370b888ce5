"""How a ``Trainer`` finds the bus of its run without importing the orchestrator.

The orchestrator registers a launcher under the entry-point group ``trainbus.launchers`` (name
``default``). A launcher owns the run's lifecycle around the training work: it starts an event
loop (or uses the caller's), opens the run's ``Bus`` with its journal and sinks, hands the bus to
``work``, and closes it (flushing the sinks) whatever ``work`` did. The same ``work(bus)`` serves a
plain script (``run_blocking``) and an async service (``run_async``).

``TRAINBUS_LAUNCHER`` picks another registered name; ``TRAINBUS_LAUNCHER=local`` (or no entry
point at all) selects ``LocalLauncher``: a bus with no journal and no sinks, enough for control
callbacks and in-process sinks added by tests.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.from_thread
import anyio.to_thread
import structlog

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._sink import Sink
from trainbus.bus._worker import run_in_worker_thread

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "Launcher", "LocalLauncher", "resolve_launcher"]

logger = structlog.get_logger(__name__)

ENTRY_POINT_GROUP: Final = "trainbus.launchers"
ENV_VAR: Final = "TRAINBUS_LAUNCHER"

T = TypeVar("T")


@runtime_checkable
class Launcher(Protocol):
    """Runs ``work(bus)`` inside an open run: from a plain thread or from a running event loop."""

    def run_blocking(self, trainer: Trainer, work: Callable[[Bus], T]) -> T:
        """Start a loop in a background thread, open the bus there, run ``work`` on this thread."""
        ...

    async def run_async(self, trainer: Trainer, work: Callable[[Bus], T]) -> T:
        """Open the bus on the running loop and run ``work`` in a worker thread."""
        ...


class LocalLauncher:
    """The fallback: a bus with no journal, its loop in a blocking-portal thread.

    ``sinks`` (none by default) are handed to every run's bus, with the trainer's own
    ``Trainer(sinks=...)``: in-process consumers such as a test's ``RecordingSink``.
    ``backend`` is the anyio backend of the portal's loop.
    """

    def __init__(self, *, sinks: Sequence[Sink] = (), backend: str = "asyncio") -> None:
        self.sinks = tuple(sinks)
        self.backend = backend

    def _bus(self, trainer: Trainer) -> Bus:
        sinks = [*self.sinks, *trainer.sinks]
        return Bus(run_id=uuid.uuid4().hex, rank=trainer.args.process_index, sinks=sinks)

    def run_blocking(self, trainer: Trainer, work: Callable[[Bus], T]) -> T:
        """Run ``work`` on the calling thread while the bus's loop runs in a portal thread."""
        bus = self._bus(trainer)
        with (
            anyio.from_thread.start_blocking_portal(self.backend) as portal,
            portal.wrap_async_context_manager(bus),
        ):
            return work(bus)

    async def run_async(self, trainer: Trainer, work: Callable[[Bus], T]) -> T:
        """Run ``work`` in a worker thread so the caller's loop stays responsive.

        Cancelling the caller asks the loop to stop after its current step (as a callback
        setting ``should_training_stop`` would) and waits for it.
        """

        def stop() -> None:
            trainer.request_stop()

        async with self._bus(trainer) as bus:
            return await run_in_worker_thread(functools.partial(work, bus), on_cancel=stop)


def resolve_launcher(name: str | None = None) -> Launcher:
    """The launcher named by ``name``, ``$TRAINBUS_LAUNCHER`` or ``default``; local as fallback."""
    wanted = name or os.environ.get(ENV_VAR) or "default"
    if wanted == "local":
        return LocalLauncher()
    found = entry_points(group=ENTRY_POINT_GROUP, name=wanted)
    if not found:
        if wanted != "default":
            raise ConfigurationError(
                f"{ENV_VAR}={wanted!r} names no launcher; expected 'local' or one registered under "
                f"the entry-point group {ENTRY_POINT_GROUP!r}"
            )
        return LocalLauncher()
    entry = next(iter(found))
    try:
        loaded: Any = entry.load()
    except (ImportError, AttributeError) as exc:
        logger.warning(
            "launcher unavailable, using the local launcher",
            launcher=wanted,
            target=entry.value,
            error=str(exc),
        )
        return LocalLauncher()
    launcher = loaded() if isinstance(loaded, type) else loaded
    if not isinstance(launcher, Launcher):
        raise ConfigurationError(
            f"the launcher {entry.value!r} registered as {wanted!r} has no run_blocking/run_async"
        )
    return launcher

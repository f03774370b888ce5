"""The launcher the ``Trainer`` finds under the entry point ``trainbus.launchers: default``.

``Trainer.train()`` and ``await Trainer.train_async()`` hand their training work to it; it wraps
that work in an ``Orchestrator`` so ``report_to``, the journal and the run directory apply to
plain scripts exactly as to the CLI. When the trainer already runs inside
``Orchestrator.train()``, the launcher reuses that run instead of opening a second one (the active
orchestrator travels to the worker thread in a context variable). Later calls on the same trainer
(``evaluate()`` after ``train()``) continue its run: same run directory, journal and tracker runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from trainbus.bus._bus import Bus
from trainbus.orchestrator.run import Orchestrator, active_orchestrator

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = ["LAUNCHER", "OrchestratorLauncher", "active_orchestrator"]

T = TypeVar("T")


class OrchestratorLauncher:
    """Opens an ``Orchestrator`` around the trainer's work, on a portal thread or the host loop."""

    def __init__(self, *, backend: str = "asyncio") -> None:
        self.backend = backend
        self._run_ids: weakref.WeakKeyDictionary[Trainer, str] = weakref.WeakKeyDictionary()

    def _orchestrator(self, trainer: Trainer) -> Orchestrator:
        """One run per trainer: ``evaluate()`` after ``train()`` continues the same run."""
        run_id = self._run_ids.get(trainer)
        orch = Orchestrator.for_trainer(trainer, run_id=run_id)
        self._run_ids[trainer] = orch.run_id
        return orch

    def run_blocking(self, trainer: Trainer, work: Callable[[Bus], T]) -> T:
        """Run ``work`` on the calling thread; the bus and sinks run on a blocking-portal loop."""
        active = active_orchestrator.get()
        if active is not None:
            return work(active.bus)
        return self._orchestrator(trainer).run_blocking(work, backend=self.backend)

    async def run_async(self, trainer: Trainer, work: Callable[[Bus], T]) -> T:
        """Open the run on the caller's loop and run ``work`` in a worker thread."""

        def stop() -> None:  # cancelling train_async() stops the loop after its current step
            trainer.request_stop()

        active = active_orchestrator.get()
        if active is not None:
            return await active.run_in_thread(work, on_cancel=stop)
        async with self._orchestrator(trainer) as orch:
            return await orch.run_in_thread(work, on_cancel=stop)


LAUNCHER: Final = OrchestratorLauncher()
"""The instance registered as ``trainbus.launchers: default``."""

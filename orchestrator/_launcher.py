"""The launcher the ``Trainer`` finds under the entry point ``trainbus.launchers: default``.

A plain script's ``Trainer.train()`` (or ``await Trainer.train_async()``) asks it for the bus of
its run; it opens an ``Orchestrator`` built from the trainer, so ``report_to``, the journal and
the run directory apply to plain scripts exactly as to the CLI. Later calls on the same trainer
(``evaluate()`` after ``train()``) continue its run: same run directory, journal and tracker
runs, as long as they write to the same ``output_dir``. A trainer moved to another ``output_dir``
starts a new run there: a hyper-parameter search moves it to each trial's directory, so each
trial is a run of its own. The threading around it (portal thread or worker thread) is the
trainer's.

Under ``torchrun`` a new run first joins the trainer's process group and takes world rank zero's
run id (``Orchestrator.for_trainer``); that may wait for the other ranks to start, so it runs in a
worker thread and the event loop (a host service's, under ``train_async``) keeps serving.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio.to_thread

from trainbus.bus._bus import Bus
from trainbus.orchestrator.logging import apply_level, configure_logging
from trainbus.orchestrator.run import Orchestrator

__all__ = ["LAUNCHER", "OrchestratorLauncher"]


class OrchestratorLauncher:
    """Opens one ``Orchestrator`` run per trainer and ``output_dir``, continued by each later
    call on that trainer that writes to the same ``output_dir``."""

    def __init__(self) -> None:
        self._run_ids: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
        """trainer -> (the ``output_dir`` of its last run, that run's id)."""

    @asynccontextmanager
    async def open_run(self, trainer: Any) -> AsyncIterator[Bus]:
        """Open (or continue) ``trainer``'s run on the running loop and yield its bus."""
        _apply_log_level(trainer.args)
        output_dir = str(trainer.args.output_dir)
        last_dir, last_id = self._run_ids.get(trainer, ("", None))
        build = functools.partial(
            Orchestrator.for_trainer, trainer, run_id=last_id if last_dir == output_dir else None
        )
        orch = await anyio.to_thread.run_sync(build)
        self._run_ids[trainer] = (output_dir, orch.run_id)
        async with orch.open_run(trainer) as bus:
            yield bus


def _apply_log_level(args: Any) -> None:
    """The trainer's ``log_level`` (``log_level_replica`` where it does not log) for trainbus's
    own events, as transformers applies it to its library; ``"passive"`` changes nothing."""
    name = args.log_level if args.should_log else args.log_level_replica
    if name == "passive":
        return
    configure_logging()
    apply_level(args.get_process_log_level())


LAUNCHER: Final = OrchestratorLauncher()
"""The instance registered as ``trainbus.launchers: default``."""

"""What the launcher knows about a run that the training side must honour, carried by its bus.

The trainer never imports the orchestrator (``trainbus.trainer._launcher``): it gets a ``Bus`` and
nothing else. Three facts of the run are the orchestrator's to decide and the trainer's to act on,
so they travel with the bus as one small frozen record:

* ``report_to``: the integrations actually started (``"all"`` resolved to names), which the
  trainer writes into ``RunStarted.config`` as transformers writes its normalised list;
* ``wants_final_model``: whether any sink of the run (in this process, in the sink process, or
  passed by the user) uploads the final model, so the trainer writes it at the end of training
  only when someone will read it;
* ``continued``: whether this bus continues a run an earlier call began (``evaluate()`` after
  ``train()``), so ``RunStarted`` can say so and sinks keep their tracker run.

Torch-free, like the rest of the bus.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunContext"]


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """The launcher's answers about one run (see the module docstring)."""

    report_to: tuple[str, ...] | None = None
    """The ``report_to`` integrations started for the run, resolved; ``None`` when the launcher
    resolves no names (a bare ``Bus``): the arguments are then published as given."""

    wants_final_model: bool = False
    """Whether a sink of the run set ``Sink.wants_final_model``."""

    continued: bool = False
    """Whether an earlier call of the same run already published ``RunStarted``."""

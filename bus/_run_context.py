"""What the launcher knows about a run that the training side must honour, carried by its bus.

The trainer never imports the orchestrator (``trainbus.trainer._launcher``): it gets a ``Bus`` and
nothing else. Four facts of the run are the orchestrator's to decide and the trainer's to act on,
so they travel with the bus as one small frozen record:

* ``report_to``: the integrations actually started (``"all"`` resolved to names), which the
  trainer writes into ``RunStarted.config`` as transformers writes its normalised list;
* ``wants_final_model``: whether any sink of the run (in this process, in the sink process, or
  passed by the user) uploads the final model, so the trainer writes it at the end of training
  only when someone will read it;
* ``wants_histograms``: the tensors whose histograms a sink logs (``WANDB_WATCH``), so the trainer
  computes them at the steps the sink's tracker would, and never otherwise;
* ``continued``: whether this bus continues a run an earlier call began (``evaluate()`` after
  ``train()``), so ``RunStarted`` can say so and sinks keep their tracker run.

Torch-free, like the rest of the bus.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trainbus.bus._events import HistogramSource
from trainbus.bus._sink import Sink

__all__ = ["RunContext"]


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """The launcher's answers about one run (see the module docstring)."""

    report_to: tuple[str, ...] | None = None
    """The ``report_to`` integrations started for the run, resolved; ``None`` when the launcher
    resolves no names (a bare ``Bus``): the arguments are then published as given."""

    wants_final_model: bool = False
    """Whether a sink of the run set ``Sink.wants_final_model``."""

    wants_histograms: frozenset[HistogramSource] = frozenset()
    """The tensors (``"gradients"``, ``"parameters"``) some sink of the run wants histograms of
    (``Sink.wants_histograms``)."""

    continued: bool = False
    """Whether an earlier call of the same run already published ``RunStarted``."""

    @classmethod
    def of_sinks(
        cls,
        sinks: Iterable[Sink],
        *,
        report_to: tuple[str, ...] | None = None,
        continued: bool = False,
    ) -> RunContext:
        """The context whose wants are what any of ``sinks`` asks the trainer for.

        Args:
            sinks: every sink of the run, wherever it runs (this process or the sink process).
            report_to: the resolved ``report_to`` names, if the launcher resolved any.
            continued: whether an earlier call of the run already started it.
        """
        chosen = list(sinks)
        histograms: set[HistogramSource] = set()
        for sink in chosen:
            histograms.update(sink.wants_histograms)
        return cls(
            report_to=report_to,
            wants_final_model=any(sink.wants_final_model for sink in chosen),
            wants_histograms=frozenset(histograms),
            continued=continued,
        )

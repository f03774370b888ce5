"""trainbus: Hugging Face's ``Trainer`` API on an async event bus with non-blocking sinks.

``from trainbus import Trainer, TrainingArguments`` is the entry, as ``from transformers import
...`` is for transformers. The four layers are subpackages: ``trainbus.bus`` (events, journal,
sink runtime; torch-free), ``trainbus.trainer`` (the loop and the callback contract),
``trainbus.sinks`` (one module per integration) and ``trainbus.orchestrator`` (runs, ``report_to``,
the CLI). Names are exported lazily, so ``import trainbus.bus`` does not pull in torch through
this module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainbus.bus import (
        Bus,
        Event,
        PermanentSinkError,
        RetryableSinkError,
        Sink,
        TrainbusError,
    )
    from trainbus.orchestrator import Orchestrator, sync_run
    from trainbus.orchestrator.bridge import TrainbusCallback
    from trainbus.trainer import (
        DefaultFlowCallback,
        EarlyStoppingCallback,
        EvalPrediction,
        PredictionOutput,
        PrinterCallback,
        ProgressCallback,
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
        TrainOutput,
        default_data_collator,
        set_seed,
    )

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "EvalPrediction",
    "Event",
    "Orchestrator",
    "PermanentSinkError",
    "PredictionOutput",
    "PrinterCallback",
    "ProgressCallback",
    "RetryableSinkError",
    "Sink",
    "TrainOutput",
    "TrainbusCallback",
    "TrainbusError",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "TrainingArguments",
    "default_data_collator",
    "set_seed",
    "sync_run",
]

_HOME = {
    **dict.fromkeys(
        ["Bus", "Event", "PermanentSinkError", "RetryableSinkError", "Sink", "TrainbusError"],
        "trainbus.bus",
    ),
    **dict.fromkeys(["Orchestrator", "sync_run"], "trainbus.orchestrator"),
    "TrainbusCallback": "trainbus.orchestrator.bridge",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'trainbus' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME.get(name, "trainbus.trainer")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

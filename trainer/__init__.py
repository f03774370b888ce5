"""trainbus's trainer: Hugging Face's ``Trainer`` API, each callback point published on the bus."""

from __future__ import annotations

from trainer.arguments import TrainingArguments
from trainer.callbacks import TrainerCallback
from trainer.data import default_data_collator
from trainer.early_stopping import EarlyStoppingCallback
from trainer.evaluation import EvalPrediction, PredictionOutput, TrainOutput
from trainer.flow import DefaultFlowCallback
from trainer.handler import CallbackHandler
from trainer.launcher import Launcher, LocalLauncher, resolve_launcher
from trainer.loop import Trainer
from trainer.progress import PrinterCallback, ProgressCallback
from trainer.rng import set_seed
from trainer.state import ExportableState, TrainerControl, TrainerState

__all__ = [
    "CallbackHandler",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "EvalPrediction",
    "ExportableState",
    "Launcher",
    "LocalLauncher",
    "PredictionOutput",
    "PrinterCallback",
    "ProgressCallback",
    "TrainOutput",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "TrainingArguments",
    "default_data_collator",
    "resolve_launcher",
    "set_seed",
]

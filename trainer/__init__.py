"""trainbus's trainer: Hugging Face's ``Trainer`` API, each callback point published on the bus."""

from __future__ import annotations

from trainbus.trainer.arguments import TrainingArguments
from trainbus.trainer.callbacks import TrainerCallback
from trainbus.trainer.data import default_data_collator
from trainbus.trainer.early_stopping import EarlyStoppingCallback
from trainbus.trainer.evaluation import EvalPrediction, PredictionOutput, TrainOutput
from trainbus.trainer.flow import DefaultFlowCallback
from trainbus.trainer.handler import CallbackHandler
from trainbus.trainer.launcher import Launcher, LocalLauncher, resolve_launcher
from trainbus.trainer.loop import Trainer
from trainbus.trainer.progress import PrinterCallback, ProgressCallback
from trainbus.trainer.rng import set_seed
from trainbus.trainer.state import ExportableState, TrainerControl, TrainerState

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

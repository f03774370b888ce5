"""trainbus's trainer: Hugging Face's ``Trainer`` API, each callback point published on the bus."""

from __future__ import annotations

from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._collators import default_data_collator
from trainbus.trainer._early_stopping import EarlyStoppingCallback
from trainbus.trainer._evaluation import EvalPrediction, PredictionOutput, TrainOutput
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._launcher import Launcher, LocalLauncher
from trainbus.trainer._progress import PrinterCallback, ProgressCallback
from trainbus.trainer._rng import set_seed
from trainbus.trainer._search import BestRun
from trainbus.trainer._state import ExportableState, TrainerControl, TrainerState
from trainbus.trainer._trainer import Trainer

__all__ = [
    "BestRun",
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
    "set_seed",
]

"""trainbus sinks: TensorBoard, MLflow, Comet, DagsHub, DVCLive and W&B, each in its own module.

Names are exported lazily so ``import sinks`` costs nothing and pulls in no HTTP stack or vendor
code until a sink is actually used (``report_to`` resolves "module:Class" strings anyway).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainbus.bus._secrets import redact, redact_url
    from trainbus.sinks._rewrite import rewrite_logs
    from trainbus.sinks.azureml import AzureMLSink
    from trainbus.sinks.clearml import ClearMLSink
    from trainbus.sinks.codecarbon import CodeCarbonSink
    from trainbus.sinks.comet import CometSink
    from trainbus.sinks.dagshub import DagsHubSink
    from trainbus.sinks.dvclive import DVCLiveSink
    from trainbus.sinks.flyte import FlyteSink
    from trainbus.sinks.mlflow import MLflowSink
    from trainbus.sinks.swanlab import SwanLabSink
    from trainbus.sinks.tensorboard import TensorBoardSink
    from trainbus.sinks.wandb import WandbSink

__all__ = [
    "AzureMLSink",
    "ClearMLSink",
    "CodeCarbonSink",
    "CometSink",
    "DVCLiveSink",
    "DagsHubSink",
    "FlyteSink",
    "MLflowSink",
    "SwanLabSink",
    "TensorBoardSink",
    "WandbSink",
    "redact",
    "redact_url",
    "rewrite_logs",
]

_LAZY = {
    "AzureMLSink": "trainbus.sinks.azureml",
    "ClearMLSink": "trainbus.sinks.clearml",
    "CodeCarbonSink": "trainbus.sinks.codecarbon",
    "CometSink": "trainbus.sinks.comet",
    "DVCLiveSink": "trainbus.sinks.dvclive",
    "DagsHubSink": "trainbus.sinks.dagshub",
    "FlyteSink": "trainbus.sinks.flyte",
    "MLflowSink": "trainbus.sinks.mlflow",
    "SwanLabSink": "trainbus.sinks.swanlab",
    "TensorBoardSink": "trainbus.sinks.tensorboard",
    "WandbSink": "trainbus.sinks.wandb",
    "redact": "trainbus.bus._secrets",
    "redact_url": "trainbus.bus._secrets",
    "rewrite_logs": "trainbus.sinks._rewrite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainbus.sinks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

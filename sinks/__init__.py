"""trainbus sinks: TensorBoard, MLflow, Comet, DagsHub, DVCLive and W&B, each in its own module.

Names are exported lazily so ``import sinks`` costs nothing and pulls in no HTTP stack or vendor
code until a sink is actually used (``report_to`` resolves "module:Class" strings anyway).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sinks._redact import redact, redact_url
    from sinks._rewrite import rewrite_logs
    from sinks.comet import CometSink
    from sinks.dagshub import DagsHubSink
    from sinks.dvclive import DVCLiveSink
    from sinks.mlflow import MLflowSink
    from sinks.tensorboard import TensorBoardSink
    from sinks.wandb import WandbSink

__all__ = [
    "CometSink",
    "DVCLiveSink",
    "DagsHubSink",
    "MLflowSink",
    "TensorBoardSink",
    "WandbSink",
    "redact",
    "redact_url",
    "rewrite_logs",
]

_LAZY = {
    "CometSink": "sinks.comet",
    "DVCLiveSink": "sinks.dvclive",
    "DagsHubSink": "sinks.dagshub",
    "MLflowSink": "sinks.mlflow",
    "TensorBoardSink": "sinks.tensorboard",
    "WandbSink": "sinks.wandb",
    "redact": "sinks._redact",
    "redact_url": "sinks._redact",
    "rewrite_logs": "sinks._rewrite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sinks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

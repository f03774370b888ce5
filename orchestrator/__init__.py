"""trainbus orchestrator: the run lifecycle, ``report_to``, the trainer's launcher, CLI and sync.

Importing it pulls in neither torch nor a vendor SDK; the trainer and the sinks are imported when
a run needs them.
"""

from __future__ import annotations

from trainbus.orchestrator.config import TrainConfig, load_train_config, parse_train_config
from trainbus.orchestrator.logging import configure_logging
from trainbus.orchestrator.registry import INTEGRATIONS, available_integrations, resolve_report_to
from trainbus.orchestrator.run import Orchestrator, warm_up
from trainbus.orchestrator.rundir import RunDir, RunRecord, find_run_dir
from trainbus.orchestrator.show import RunSummary, summarize
from trainbus.orchestrator.sync import sync_run

__all__ = [
    "INTEGRATIONS",
    "Orchestrator",
    "RunDir",
    "RunRecord",
    "RunSummary",
    "TrainConfig",
    "available_integrations",
    "configure_logging",
    "find_run_dir",
    "load_train_config",
    "parse_train_config",
    "resolve_report_to",
    "summarize",
    "sync_run",
    "warm_up",
]

"""trainbus orchestrator: the run lifecycle, ``report_to``, the launcher, the CLI and sync.

Importing it pulls in neither torch nor a vendor SDK; the trainer and the sinks are imported when
a run needs them.
"""

from __future__ import annotations

from orchestrator.config import TrainConfig, load_train_config, parse_train_config
from orchestrator.launcher import LAUNCHER, OrchestratorLauncher
from orchestrator.logging import configure_logging
from orchestrator.registry import INTEGRATIONS, available_integrations, resolve_report_to
from orchestrator.run import Orchestrator, warm_up
from orchestrator.rundir import RunDir, RunRecord, find_run_dir
from orchestrator.show import RunSummary, summarize
from orchestrator.sync import sync_run

__all__ = [
    "INTEGRATIONS",
    "LAUNCHER",
    "Orchestrator",
    "OrchestratorLauncher",
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

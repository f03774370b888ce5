"""What the Comet sink asks of the ``comet_ml`` SDK: start an experiment, log events, end it.

Every function here blocks and runs on the sink's worker thread, one call at a time; none is
called on the training thread or the event loop. The SDK does the transport itself: online it
sends metrics and parameters in batches (lists of messages posted to the server's
``/clientlib/batch/logger/...`` endpoints from its own streamer thread), offline it writes the
``.zip`` archive that ``comet upload`` sends later.

What the SDK is asked to do beyond the run's own data is chosen here, once: system details and
installed packages (one message each, when the experiment is created), nothing periodic. The
SDK's CPU, GPU, network and disk monitors, its stdout capture, source-code and git logging and
its CO2 tracker are off: each runs a thread (or a child tool) inside the training process, and
none of them is data the user logged.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from trainbus.bus._events import Log, Predict
from trainbus.sinks._rewrite import numeric_items, rewrite_logs

__all__ = [
    "AUTO_LOGGING_VARIABLE",
    "Settings",
    "end_experiment",
    "import_comet",
    "log_metrics",
    "log_parameters",
    "start_experiment",
    "upload_archives",
]

AUTO_LOGGING_VARIABLE: Final = "COMET_DISABLE_AUTO_LOGGING"
"""Read by ``comet_ml`` when it is imported: ``1`` stops it from installing import hooks that
patch torch, mlflow, TensorBoard and others. The sink sets it (unless the user did) before the
first import, see ``import_comet``."""


@dataclass(frozen=True)
class Settings:
    """How to reach Comet and which experiment to log to (read from the environment)."""

    api_key: str | None
    workspace: str | None
    project: str | None
    online: bool
    url_override: str | None
    offline_directory: str


def import_comet() -> Any:
    """Import ``comet_ml`` with its auto-logging off unless the user asked for it.

    On import, ``comet_ml`` hooks the import of torch, mlflow, TensorBoard, Keras and others to
    log from inside them; with mlflow, every MLflow run then also writes a Comet offline archive
    into the working directory. The sink logs what the trainer publishes, so it needs none of
    that: ``COMET_DISABLE_AUTO_LOGGING`` is set to ``1`` for the process when it is unset.
    """
    os.environ.setdefault(AUTO_LOGGING_VARIABLE, "1")
    import comet_ml

    return comet_ml


def start_experiment(settings: Settings, *, name: str, key: str | None, mode: str) -> Any:
    """Create (``mode`` ``create``/``get_or_create``) or continue (``get``) an experiment.

    A continued experiment sends no system details again: they were sent when it was created.
    """
    if settings.url_override:
        # The SDK reads its server from its configuration only (the environment or a config
        # file, read again at every call): the process's environment is the one way to set it.
        os.environ["COMET_URL_OVERRIDE"] = settings.url_override
    comet_ml = import_comet()
    new = mode != "get"
    # An explicit key for a new experiment: without one, ``comet_ml.start`` hands back any
    # experiment still running in this process with the same options (an earlier run's, whose
    # sink was abandoned at its close deadline) and this run would log into it.
    key = key or uuid.uuid4().hex
    config = comet_ml.ExperimentConfig(
        name=name or None,
        offline_directory=settings.offline_directory,
        log_env_details=new,
        log_env_host=new,
        log_env_gpu=False,
        log_env_cpu=False,
        log_env_network=False,
        log_env_disk=False,
        log_code=False,
        log_graph=False,
        log_git_metadata=False,
        log_git_patch=False,
        auto_output_logging=False,
        auto_param_logging=False,
        auto_metric_logging=False,
        auto_log_co2=False,
        parse_args=False,
        display_summary_level=0,
    )
    experiment = comet_ml.start(
        api_key=settings.api_key,
        workspace=settings.workspace,
        project_name=settings.project,
        experiment_key=key,
        mode=mode,
        online=settings.online,
        experiment_config=config,
    )
    if not experiment.alive:
        # The SDK logs the reason, returns a disabled experiment and would drop every point.
        experiment.end()
        raise ConnectionError("the Comet SDK could not start the experiment (see its log above)")
    return experiment


def log_parameters(experiment: Any, config: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
    """The training arguments and the model config, nested, as transformers' callback logs them
    (the SDK flattens them to ``args|learning_rate``, ``config|hidden_size``)."""
    params: dict[str, Any] = {"args": dict(config)}
    if hparams:
        params["config"] = dict(hparams)
    experiment.log_parameters(params, nested_support=True)


def log_metrics(experiment: Any, event: Log | Predict) -> int:
    """Log the event's numbers under transformers' names (``train/loss``, ``eval/loss``) at its
    step and epoch; returns how many values were left out (not numbers, or not finite: JSON
    has no spelling for NaN and Comet plots numbers only)."""
    values = event.logs if isinstance(event, Log) else event.metrics
    rewritten = rewrite_logs(values)
    numbers = {name: v for name, v in numeric_items(rewritten) if math.isfinite(v)}
    if numbers:
        experiment.log_metrics(numbers, step=event.global_step, epoch=event.epoch)
    return len(rewritten) - len(numbers)


def end_experiment(experiment: Any) -> None:
    """End the experiment: online, deliver what is left; offline, write the ``.zip`` archive
    (``<offline directory>/<experiment key>[-<suffix>].zip``)."""
    experiment.end()


def upload_archives(archives: list[str]) -> None:
    """Send offline archives to the server in the SDK's configuration, in the order given, as
    ``comet upload`` does (the same SDK function); raises if any of them failed."""
    import_comet()
    from comet_ml.offline import main_upload

    main_upload(archives, force_upload=False)

"""ClearML through its SDK: one task per training run, online or in ClearML's offline mode.

Mirrors Hugging Face's ``ClearMLCallback``: a task the user started (``Task.current_task()``)
is reused and left open, otherwise the sink creates one with ``Task.init`` (project
``CLEARML_PROJECT``, default ``HuggingFace Transformers``; name ``CLEARML_TASK``, default
``Trainer``; TensorBoard and PyTorch auto-logging off; output URI on) and closes it when the run
finishes. ``RunStarted`` puts the training arguments (fields ending in ``_token`` left out,
secrets masked, nested values flattened as ``a/b``) in the ``Transformers`` hyper-parameter
section and the model config in the ``Model Configuration`` configuration object. Each ``Log``
reports its numbers at iteration ``global_step``: HF's single-value scalars (``train_runtime``,
``train_samples_per_second``, ``train_steps_per_second``, ``train_loss``, ``total_flos``,
``epoch``) as single values, ``eval_*`` under the title ``eval`` (series: the rest of the key),
``test_*`` under ``test``, anything else under ``train``. ``CLEARML_LOG_MODEL`` (default: true
for a task the sink created, false for the user's) registers each checkpoint (``Artifact`` of
kind ``checkpoint``, and the final model when one is published) as an output model, deleting the
oldest beyond the run's ``save_total_limit``. ``CLEARML_OFFLINE_MODE`` runs the SDK offline.

Where it differs, and why:

* One task per training run: ``evaluate()`` or ``predict()`` after ``train()`` report into the
  same task, continued (``Task.init(reuse_last_task_id=..., continue_last_task=0)``) when the
  sink had closed it; HF's callback reports them to a task it already closed, where they are
  lost. The task id is kept in ``<run_dir>/clearml.json`` with the highest event reported, so
  a replayed batch reports nothing twice and params are set once.
* ``Predict`` metrics are reported (title ``test``); HF's callback has no ``on_predict``.
* ``Task.close()`` never hangs and a scalar costs microseconds: see
  ``trainbus.sinks._clearml_sdk`` (HF's callback can wait minutes in ``close()``).
* Output models work offline (HF's callback fails the training run there, as the SDK's
  ``update_weights_package`` does offline), and uploads finish before the sink acknowledges.
* Argument values are recorded as ``TrainingArguments.to_dict()`` gives them (``steps``, not
  the enum's name ``STEPS``), nested ones flattened rather than dropped; no ``_2`` suffixes,
  since a second training run gets a task of its own, and overrides from the ClearML UI are not
  applied back to a remote run (sinks never see the trainer).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import (
    ConfigurationError,
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
)
from trainbus.bus._events import Artifact, Event, Log, Predict, RunFinished, RunStarted
from trainbus.bus._paths import confined_files, output_root
from trainbus.bus._secrets import redact
from trainbus.bus._sink import Sink
from trainbus.sinks._clearml_sdk import (
    log_model_package,
    offline_models,
    prefer_in_process_reporting,
    remove_model,
    reports_in_process,
    restore_offline_models,
)
from trainbus.sinks._sdk_worker import SdkWorker, SinkState, imported_sdk

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["ClearMLSink", "HPARAMS_SECTION", "MODEL_CONFIG_NAME", "SINGLE_VALUE_SCALARS"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "clearml.json"
HPARAMS_SECTION: Final = "Transformers"
MODEL_CONFIG_NAME: Final = "Model Configuration"
SINGLE_VALUE_SCALARS: Final = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
        "epoch",
    }
)
"""Reported once per run as ClearML single values, as HF's callback does."""
_TITLES: Final = (("eval_", "eval"), ("test_", "test"))
_IGNORE_OVERRIDES: Final = (
    ("_ignore_hparams_ui_overrides_", "hyperparameters"),
    ("_ignore_model_config_ui_overrides_", "model configuration"),
)
_CONFIGURED_VARIABLES: Final = (
    "CLEARML_CONFIG_FILE",
    "TRAINS_CONFIG_FILE",
    "CLEARML_API_ACCESS_KEY",
    "TRAINS_API_ACCESS_KEY",
)


class ClearMLSink(Sink):
    """Report a run to a ClearML task; see the module docstring."""

    name = "clearml"
    sdk_module = "clearml"
    prefers_sink_process = True  # its SDK does per-point Python work: off the training GIL
    events = (RunStarted, Log, Predict, Artifact, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path,
        project: str = "HuggingFace Transformers",
        task_name: str = "Trainer",
        log_model: bool | None = None,
        offline: bool = False,
    ) -> None:
        """Parameters mirror HF's variables (see the module docstring).

        Args:
            run_dir: the trainbus run directory; ``clearml.json`` keeps the task id there.
            project: project of a task the sink creates.
            task_name: name of a task the sink creates.
            log_model: register checkpoints as output models; ``None``: only in a task the sink
                created, as in HF.
            offline: switch the SDK to offline mode (``Task.set_offline(True)``) first.
        """
        self.run_dir = run_dir
        self.project = project
        self.task_name = task_name
        self.log_model = log_model
        self.offline = offline
        # A task the user started (``Task.init`` before ``train()``) is adopted, as HF does: it
        # lives in this process, so the sink stays here with it.
        task_class = getattr(imported_sdk("clearml"), "Task", None)
        self.prefers_sink_process = task_class is None or task_class.current_task() is None
        self._worker = SdkWorker(_map_errors)
        self._clearml: Any = None
        self._task: Any = None
        self._owns_task = False
        self._state = SinkState(run_dir / STATE_FILE)
        self.dropped_values = 0

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """For ``report_to="all"``: installed, and ClearML configured, so a default run never
        tries to reach ClearML's hosted server: offline mode, credentials in the environment, or
        a ClearML configuration file (``CLEARML_CONFIG_FILE``, ``~/clearml.conf``)."""
        if importlib.util.find_spec("clearml") is None:
            return False
        if env_flag(env, "CLEARML_OFFLINE_MODE", lenient=True):
            return True
        if any(env_str(env, name) for name in _CONFIGURED_VARIABLES):
            return True
        home = env_str(env, "HOME")
        root = Path(home) if home else Path.home()
        return any((root / name).is_file() for name in ("clearml.conf", "trains.conf"))

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from HF's ClearML variables and ``CLEARML_OFFLINE_MODE``."""
        if importlib.util.find_spec("clearml") is None:
            raise ConfigurationError(
                "report_to names clearml but the clearml package is not installed; install it "
                "with pip install 'trainbus[clearml]' or drop clearml from report_to."
            )
        raw_log_model = env_str(env, "CLEARML_LOG_MODEL")
        return cls(
            run_dir=run_dir,
            project=env_str(env, "CLEARML_PROJECT") or "HuggingFace Transformers",
            task_name=env_str(env, "CLEARML_TASK") or "Trainer",
            log_model=None if raw_log_model is None else env_flag(env, "CLEARML_LOG_MODEL"),
            offline=env_flag(env, "CLEARML_OFFLINE_MODE"),
        )

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Import the SDK only; the task starts at the first write, as in HF's ``setup``."""
        self._state.load()
        self._clearml = await self._worker.call(_import_clearml)

    async def write(self, batch: Sequence[Event]) -> None:
        """Report the batch, wait until the SDK has written it, then record the watermark."""
        await self._worker.write_fresh(self._state, batch, self._write)

    async def close(self) -> None:
        """Close a task this sink created whose ``RunFinished`` never came; leave others open."""
        if self._task is not None:
            await self._worker.call(self._finish)

    @property
    def task_id(self) -> str | None:
        """The ClearML task id, once the task started (or from an earlier session)."""
        saved = self._state.get("task_id")
        return str(self._task.id) if self._task is not None else saved

    @property
    def logs_models(self) -> bool:
        """Whether checkpoints become output models: ``CLEARML_LOG_MODEL``, else ownership."""
        return self._owns_task if self.log_model is None else self.log_model

    # --- internals (worker thread) ------------------------------------------------------------

    def _write(self, events: Sequence[Event]) -> None:
        for event in events:
            task = self._task if self._task is not None else self._start()
            if isinstance(event, Log):
                self._report(task, event.logs, event.global_step)
            elif isinstance(event, Predict):
                self._report(task, event.metrics, event.global_step)
            elif isinstance(event, RunStarted):
                self._log_params(task, event)
            elif isinstance(event, Artifact) and self._wants(event):
                self._log_model(task, event)
            elif isinstance(event, RunFinished):
                self._finish()
        if self._task is not None:
            self._task.flush(wait_for_uploads=True)

    def _start(self) -> Any:
        """Attach to the user's running task, continue this run's own, or create it."""
        task_class = self._clearml.Task
        saved = self._state.get("task_id")
        current = task_class.current_task()
        if self.offline and current is None:  # a running task keeps its own mode
            task_class.set_offline(True)
        if current is not None and task_class.running_locally():
            self._task = current
            self._owns_task = bool(self._state.get("owned")) and str(current.id) == saved
        else:
            prefer_in_process_reporting()
            earlier = offline_models(saved) if saved and task_class.is_offline() else []
            continued = {"reuse_last_task_id": saved, "continue_last_task": 0} if saved else {}
            self._task = task_class.init(
                project_name=self.project,
                task_name=self.task_name,
                auto_connect_frameworks={"tensorboard": False, "pytorch": False},
                output_uri=True,
                **continued,
            )
            # an agent running the task remotely owns its lifecycle, as HF's callback assumes
            self._owns_task = bool(task_class.running_locally())
            if not reports_in_process(task_class):
                log.warning(
                    "clearml reports through a forked process: a ClearML task was created "
                    "earlier in this process, so its close() may be slow"
                )
            restore_offline_models(self._task, earlier)
        self._state.update(task_id=str(self._task.id), owned=self._owns_task)
        self._state.save()
        log.info(
            "clearml task ready",
            task_id=str(self._task.id),
            owned=self._owns_task,
            offline=bool(task_class.is_offline()),
        )
        return self._task

    def _finish(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.flush(wait_for_uploads=True)
        if self._owns_task:
            task.close()

    def _log_params(self, task: Any, started: RunStarted) -> None:
        self._state["save_total_limit"] = started.config.get("save_total_limit")
        if self._state.get("params_logged"):
            return
        task.set_parameters(_hyperparameters(started.config))
        for name, what in _IGNORE_OVERRIDES:
            task.set_parameter(
                name=f"{HPARAMS_SECTION}/{name}",
                value=True,
                value_type=bool,
                description=(
                    f"If True, ignore Transformers {what} overrides done in the UI/backend when "
                    "running remotely. trainbus never applies them."
                ),
            )
        if started.hparams:
            task.set_configuration_object(
                name=MODEL_CONFIG_NAME,
                config_dict=redact(started.hparams),
                description="The configuration of model number 1.",
            )
        self._state["params_logged"] = True

    def _report(self, task: Any, values: Mapping[str, Any], step: int) -> None:
        logger = task.get_logger()
        for key, value in values.items():
            if not isinstance(value, (int, float)):
                self.dropped_values += 1
                continue
            if key in SINGLE_VALUE_SCALARS:
                logger.report_single_value(name=key, value=value)
                continue
            title, series = _title_and_series(key)
            logger.report_scalar(title=title, series=series, value=value, iteration=step)

    def _wants(self, event: Artifact) -> bool:
        return self.logs_models and event.kind in ("checkpoint", "model")

    def _log_model(self, task: Any, event: Artifact) -> None:
        source = Path(event.path)
        try:
            confined_files(source, output_root(self.run_dir), what="artifact path")
        except ConfigurationError as exc:
            log.warning("clearml artifact refused, skipped", reason=str(exc))
            return
        if not source.is_dir():
            log.warning("clearml model directory missing, skipped", path=str(source))
            return
        name = event.name or source.name
        model_id = log_model_package(
            task, name=name, directory=source.resolve(), iteration=event.global_step
        )
        if event.kind != "checkpoint":
            return
        uploaded: list[str] = self._state.setdefault("checkpoint_models", [])
        uploaded.append(model_id)
        limit = self._state.get("save_total_limit")
        while isinstance(limit, int) and 0 < limit < len(uploaded):
            try:
                remove_model(task, uploaded[0])
            except Exception as exc:  # the SDK raises anything; a stale model is no failure
                log.warning("clearml could not remove an old checkpoint", error=str(exc))
                break
            uploaded.pop(0)


def _title_and_series(key: str) -> tuple[str, str]:
    """HF's ClearML scheme: ``eval_loss`` -> (eval, loss), ``loss`` -> (train, loss)."""
    for prefix, title in _TITLES:
        if key.startswith(prefix):
            return title, key[len(prefix) :]
    return "train", key


def _hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Transformers`` section: arguments minus ``*_token`` fields, flattened, masked."""
    kept = {k: v for k, v in config.items() if not k.endswith("_token")}
    flat = _flatten(redact(kept))
    return {f"{HPARAMS_SECTION}/{key}": _param_value(value) for key, value in flat.items()}


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> Any:
    """What ClearML stores as a parameter: builtins as they are, the rest (empty dicts,
    ``None``) as HF's copy gives them (an empty string), non-finite floats as text."""
    if value is None or (isinstance(value, Mapping) and not value):
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _import_clearml() -> Any:
    import clearml

    return clearml


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """ClearML's failures as the runtime's errors: an unreachable server or a full disk may
    pass, bad credentials or usage never will; anything else is a bug and stays as it is."""
    try:
        yield
    except SinkError:
        raise
    except OSError as exc:
        raise RetryableSinkError(f"ClearML could not write or connect: {exc}") from exc
    except Exception as exc:
        from clearml.backend_api.session.defs import MissingConfigError
        from clearml.backend_api.session.session import LoginError
        from clearml.errors import UsageError

        if isinstance(exc, (MissingConfigError, LoginError)):
            raise PermanentSinkError(f"ClearML refused the configuration: {exc}") from exc
        if isinstance(exc, UsageError):
            raise PermanentSinkError(f"ClearML refused the request: {exc}") from exc
        raise

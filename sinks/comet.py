"""Comet, through the ``comet_ml`` SDK in a worker thread, online or offline.

Follows transformers' ``CometCallback``: one experiment named after the run; parameters are the
training arguments and the model config, nested (``args|learning_rate``, ``config|hidden_size``;
secrets masked); every ``Log`` and ``Predict`` entry is logged with ``rewrite_logs`` names
(``train/loss``, ``eval/loss``, ``test/...``) at ``step=global_step`` and the event's epoch;
with ``COMET_LOG_ASSETS`` the whole ``output_dir`` is uploaded at the end of training.

Online, the SDK sends metrics in batches from its own thread; ``write`` returns once the SDK has
flushed them to the server, so the bus's acknowledgement means delivered. Offline
(``COMET_START_ONLINE=0``) the SDK writes a ``.zip`` archive at the end of each segment of the
run, which ``comet upload`` (or ``trainbus comet-upload RUN_DIR``) sends later.

One experiment per run: the experiment key is kept in ``<run_dir>/comet.json`` with the last
event logged, so ``evaluate()``/``predict()`` after ``train()``, and ``trainbus sync``, continue
the same experiment, never send the parameters twice and never repeat a point. Online the key is
saved as soon as the server knows the experiment; offline only once its archive is written, so
a segment whose archive was never written is replayed into the next one.

Environment (the SDK's own names): ``COMET_API_KEY``, ``COMET_WORKSPACE``,
``COMET_PROJECT_NAME``, ``COMET_MODE`` (``get``, ``create``, ``get_or_create``),
``COMET_EXPERIMENT_KEY``, ``COMET_START_ONLINE``, ``COMET_OFFLINE_DIRECTORY`` (default
``<run_dir>/comet``), ``COMET_URL_OVERRIDE``, ``COMET_LOG_ASSETS`` (default false, as
transformers' code does). See ``docs/integrations/comet_ml.md``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Event, Log, Predict, RunFinished, RunStarted, TrainEnd
from trainbus.bus._paths import RUNS_FOLDER, confined_files, output_root
from trainbus.bus._secrets import redact, redact_url
from trainbus.bus._sink import Sink
from trainbus.sinks import _comet_api as sdk
from trainbus.sinks._sdk_worker import SdkWorker, SinkState

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["CometSink", "find_archives", "offline_archives", "upload_offline"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "comet.json"
OFFLINE_DIR: Final = "comet"
MODES: Final = ("get", "create", "get_or_create")
INSTALL_HINT: Final = "pip install 'trainbus[comet]'"

# Before anything imports comet_ml (choosing this sink imports it to check it): see
# ``_comet_api.import_comet`` for why its auto-logging stays off unless the user turned it on.
os.environ.setdefault(sdk.AUTO_LOGGING_VARIABLE, "1")


class CometSink(Sink):
    """Deliver a run to Comet, or to an offline archive; see the module docstring."""

    name = "comet_ml"
    sdk_module = "comet_ml"
    prefers_sink_process = True  # its SDK does per-point Python work: off the training GIL
    events = (RunStarted, Log, Predict, TrainEnd, RunFinished)
    # One write = one SDK flush: online that waits for the server (at least one round trip and
    # the SDK's one-second polls), so batches are large enough to keep up at logging_steps=1.
    max_batch_size = 4096
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path,
        run_name: str = "",
        api_key: str | None = None,
        url_override: str | None = None,
        workspace: str | None = None,
        project: str | None = None,
        mode: str = "get_or_create",
        experiment_key: str | None = None,
        log_assets: bool = False,
        online: bool = True,
        offline_directory: Path | None = None,
        flush_timeout: float = 120.0,
    ) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"COMET_MODE must be one of {', '.join(MODES)}; got {mode!r}.")
        if online and not api_key:
            raise ConfigurationError(
                "COMET_API_KEY must be set for online Comet logging (or set COMET_START_ONLINE=0 "
                "to write an offline archive)."
            )
        if mode == "get" and not experiment_key:
            raise ConfigurationError("COMET_MODE=get needs COMET_EXPERIMENT_KEY to be set.")
        self.run_dir = run_dir
        self.run_name = run_name
        self.mode = mode
        self.requested_key = experiment_key
        self.log_assets = log_assets
        self.online = online
        self.offline_directory = offline_directory or run_dir / OFFLINE_DIR
        self.flush_timeout = flush_timeout
        self.dropped_values = 0
        self._settings = sdk.Settings(
            api_key=api_key,
            workspace=workspace,
            project=project,
            online=online,
            url_override=url_override,
            offline_directory=str(self.offline_directory),
        )
        self._experiment: Any = None
        self._state = SinkState(run_dir / STATE_FILE)
        self._worker = SdkWorker(_map_errors)

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Chosen by ``report_to="all"`` when ``comet_ml`` is installed and configured: an API
        key in the environment (transformers also reads the SDK's config file) or offline mode
        asked for with ``COMET_START_ONLINE=0``."""
        if importlib.util.find_spec("comet_ml") is None:
            return False
        offline = not env_flag(env, "COMET_START_ONLINE", default=True, lenient=True)
        return bool(env_str(env, "COMET_API_KEY")) or offline

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from the Comet SDK's and transformers' environment variables."""
        if importlib.util.find_spec("comet_ml") is None:
            raise ConfigurationError(
                f"report_to names comet_ml but the comet_ml package is not installed; install it "
                f"with {INSTALL_HINT} or drop comet_ml from report_to."
            )
        offline_dir = env_str(env, "COMET_OFFLINE_DIRECTORY")
        return cls(
            run_dir=run_dir,
            run_name=run_name,
            api_key=env_str(env, "COMET_API_KEY"),
            url_override=env_str(env, "COMET_URL_OVERRIDE"),
            workspace=env_str(env, "COMET_WORKSPACE"),
            project=env_str(env, "COMET_PROJECT_NAME"),
            mode=(env_str(env, "COMET_MODE") or "get_or_create").lower(),
            experiment_key=env_str(env, "COMET_EXPERIMENT_KEY"),
            log_assets=env_flag(env, "COMET_LOG_ASSETS"),
            online=env_flag(env, "COMET_START_ONLINE", default=True),
            offline_directory=Path(offline_dir) if offline_dir else None,
        )

    @property
    def experiment_key(self) -> str | None:
        """The Comet experiment this run logs to (known once the sink is open)."""
        return self._state.get("experiment_key")

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Start the experiment, or continue the one this run already logged to."""
        self._state.load()
        if not self.online:  # the SDK creates the archive's folder, not its parents
            self.offline_directory.mkdir(parents=True, exist_ok=True)
        key = self._state.get("experiment_key")
        if key is not None:
            name, mode = "", "get"
        else:
            key, name, mode = self.requested_key, self.run_name, self.mode
        self._experiment = await self._worker.call(
            lambda: sdk.start_experiment(self._settings, name=name, key=key, mode=mode)
        )
        self._state["experiment_key"] = self._experiment.get_key()
        if self.online:
            self._state.save()
        log.info(
            "comet experiment started",
            experiment_key=self.experiment_key,
            online=self.online,
            continued=mode == "get",
            server=redact_url(self._settings.url_override or "") or None,
        )

    async def write(self, batch: Sequence[Event]) -> None:
        """Log the events not logged yet; online, return once the SDK flushed them."""
        fresh = self._state.fresh(batch)
        if fresh:
            await self._worker.call(self._log, fresh)
            self._state.advance(fresh[-1].seq, save=False)
        if self.online:
            # A retried batch has nothing fresh: it only waits for the SDK again.
            flushed = await self._worker.call(
                lambda: self._experiment.flush(timeout=self.flush_timeout)
            )
            if not flushed:
                raise RetryableSinkError("the Comet SDK could not deliver the batch in time")
            self._state.save()

    async def close(self) -> None:
        """End the experiment: online, flush the rest; offline, write the archive."""
        experiment, self._experiment = self._experiment, None
        if experiment is None:
            return
        await self._worker.call(sdk.end_experiment, experiment)
        self._state.save()
        if not self.online:
            archives = offline_archives(self.offline_directory, self.experiment_key or "")
            log.info(
                "comet offline archive written",
                archive=str(archives[-1]) if archives else None,
                upload=f"comet upload {archives[-1]}" if archives else None,
            )

    # --- internals (worker thread) ------------------------------------------------------------

    def _log(self, events: Sequence[Event]) -> None:
        experiment = self._experiment
        for event in events:
            if isinstance(event, RunStarted):
                self._state["output_dir"] = event.output_dir
                if not self._state.get("params_logged"):
                    sdk.log_parameters(experiment, redact(event.config), redact(event.hparams))
                    self._state["params_logged"] = True
            elif isinstance(event, (Log, Predict)):
                self.dropped_values += sdk.log_metrics(experiment, event)
            elif isinstance(event, TrainEnd) and self.log_assets:
                self._log_output_dir(experiment, event.global_step)
            elif isinstance(event, RunFinished):
                experiment.log_other("trainbus_status", event.status)
                if event.error:
                    experiment.log_other("trainbus_error", str(redact(event.error))[:1000])

    def _log_output_dir(self, experiment: Any, step: int) -> None:
        """Every file under ``output_dir`` as an asset named ``<output_dir name>/<path in it>``
        (the names ``log_asset_folder`` gives), except trainbus's own run directories."""
        folder = self._state.get("output_dir")
        if not folder or not Path(folder).is_dir():
            log.warning("comet assets skipped: no output_dir to upload", output_dir=folder)
            return
        try:
            files = confined_files(folder, output_root(self.run_dir), what="output_dir")
        except ConfigurationError as exc:
            log.warning("comet assets refused, skipped", reason=str(exc))
            return
        root, runs = Path(folder).resolve(), self.run_dir.resolve()
        if runs.parent.name == RUNS_FOLDER:
            runs = runs.parent  # <output_dir>/trainbus/: every run's journal and state
        for file in sorted(files):
            if file.is_relative_to(runs):
                continue  # the journal and sink state are no training output
            name = f"{root.name}/{file.relative_to(root).as_posix()}"
            experiment.log_asset(str(file), file_name=name, step=step)


def offline_archives(directory: Path, experiment_key: str = "") -> list[Path]:
    """The offline archives in ``directory`` (of one experiment if its key is given), oldest
    first: the order ``comet upload`` must send them in (the first creates the experiment)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{experiment_key}*.zip") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def find_archives(path: Path) -> list[Path]:
    """The archives ``trainbus comet-upload PATH`` sends, oldest first: ``PATH`` itself when it
    is a ``.zip``; else the ``.zip`` files in it, or in its ``comet/`` folder (a run directory).
    Nothing outside ``PATH`` is looked at (an output_dir is resolved to its newest run first)."""
    if path.is_file():
        if path.suffix != ".zip":
            raise ConfigurationError(f"{str(path)!r} is not a Comet offline archive (.zip)")
        return [path]
    for directory in (path, path / OFFLINE_DIR):
        found = offline_archives(directory)
        if found:
            return found
    return []


def upload_offline(archives: Sequence[Path]) -> None:
    """Upload offline archives with the SDK's own uploader (what ``comet upload`` runs), in
    order, to the server and with the API key of the SDK's configuration."""
    if not archives:
        raise ConfigurationError("no Comet offline archive (.zip) to upload")
    try:
        sdk.upload_archives([str(a) for a in archives])
    except Exception as exc:
        if type(exc).__module__.startswith("comet_ml"):
            raise PermanentSinkError(f"Comet refused the upload: {exc}") from exc
        raise


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """The SDK's failures as the runtime's errors: a refused key, workspace or experiment never
    passes; a connection or file-system failure may."""
    try:
        yield
    except (ConfigurationError, PermanentSinkError, RetryableSinkError):
        raise
    except OSError as exc:
        raise RetryableSinkError(f"Comet: {exc}") from exc
    except Exception as exc:
        from comet_ml import exceptions

        refused = (
            exceptions.InvalidAPIKey,
            exceptions.InvalidExperimentMode,
            exceptions.InvalidWorkspace,
            exceptions.ExperimentNotFound,
            exceptions.ProjectNameEmpty,
            exceptions.ViewOnlyAccessException,
            exceptions.ExperimentAlreadyUploaded,
            ValueError,  # the SDK's refusal of an argument (a malformed experiment key ...)
        )
        if isinstance(exc, refused):
            raise PermanentSinkError(f"Comet refused the experiment: {exc}") from exc
        if isinstance(exc, exceptions.CometException):
            raise RetryableSinkError(f"Comet: {exc}") from exc
        raise

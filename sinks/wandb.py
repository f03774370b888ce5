"""Weights & Biases through its SDK, online or in its offline mode (``wandb sync`` later).

Mirrors Hugging Face's ``WandbCallback``: config is the model config overlaid by the arguments
(secrets masked); ``train/global_step`` is defined as the step metric of every other metric
(``step_sync``), and each ``Log`` goes out in one ``run.log`` with HF's ``train/``/``eval/``
prefixes plus ``train/global_step``, without ``step=`` (so train and eval logs never conflict on
W&B's own step); HF's single-value scalars (``train_runtime``, ``train_samples_per_second``,
``train_steps_per_second``, ``train_loss``, ``total_flos``) go to the run summary instead.
``predict()``'s metrics go out under ``test/`` at the run's last step, as HF logs them. An
active run created by the user is reused (and left open), as in HF. A hyper-parameter search's
trials (``RunStarted.trial``) are runs of one W&B group, the search's name (its ``run_name``, else
its ``output_dir``), each named after its trial, as HF names and groups a named trial's run.

Environment: ``WANDB_PROJECT`` (default ``huggingface``), ``WANDB_ENTITY``, ``WANDB_MODE``
(``online``, ``offline``, ``disabled``), ``WANDB_DIR`` (default: the run directory, where HF
used the working directory), ``WANDB_LOG_MODEL`` and ``WANDB_WATCH``. ``WANDB_LOG_MODEL``:
``end`` uploads the final model (the sink sets ``wants_final_model``, so the trainer writes it at
the end of training and publishes ``Artifact(kind="model")``), ``checkpoint`` each checkpoint
too; both as versions of the artifact ``model-<run id>`` (``model-<run name>`` for a named run)
with HF's aliases and metadata; ``false`` nothing; any other value is warned about and treated as
``false``, as in HF v5. ``WANDB_WATCH`` (``gradients``, ``parameters``, ``all``): the sink asks
the trainer for ``Histograms`` (``wants_histograms``) every ``max(100, logging_steps)`` steps and
logs them as ``wandb.Histogram`` under ``gradients/<name>``/``parameters/<name>``, the keys
``wandb.watch`` gives. ``WANDB_DISABLED`` (HF v4) keeps the sink out of ``report_to="all"`` and
refuses it when named. Other ``WANDB_*`` variables (``WANDB_API_KEY``, ``WANDB_SILENT``, ...)
are read by the SDK itself.

Credentials are checked before training (``sinks/_wandb_auth.py``): naming W&B online without
any is a ``ConfigurationError`` saying how to log in or go offline, and ``report_to="all"``
picks W&B only when it can start without asking for a login. A refusal that is about the run,
not its points (bad credentials, a project that cannot be written), is not narrowed point by
point: ``split`` declines, so the batch is quarantined after one attempt.

One W&B run per trainbus run: its id is kept in ``<run_dir>/wandb.json``, so ``evaluate()`` or
``predict()`` after ``train()``, and a restarted sink, resume it (``resume="allow"``) and send
the config only once; offline, each resumption writes a directory of its own for the same run id,
which ``wandb sync`` uploads as one run, in order. The highest event handed to the SDK is kept
there too, so a replay never logs a point twice. Every SDK call blocks, so it runs in a worker
thread, one at a time. The SDK's background service lives as long as the process
(``wandb.teardown()`` stops it).

Offline, the service writes the run's ``.wandb`` file late: it keeps the last block in memory
until the run's stream closes, which ``run.finish()`` requests without waiting for. So once the
sink has finished a run, ``write`` (for ``RunFinished``) and ``close`` return only when the file
ends with the run's exit record (``sinks/_wandb_log.py``), within ``flush_timeout`` seconds:
everything acknowledged is then on disk, and a new sink on the same run directory resumes it.
Until then the service holds the file's last block in memory, and a job killed with its service
loses it: offline, the sink keeps the state file's ``written_seq`` and its cursor
(``durable_seq``) at the last event the file holds (``DurableFrontier``), so that ``trainbus
sync`` hands the SDK the rest again.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import (
    ConfigurationError,
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
)
from trainbus.bus._events import (
    Artifact,
    Event,
    Histograms,
    HistogramSource,
    Log,
    Predict,
    RunFinished,
    RunStarted,
)
from trainbus.bus._paths import confined_files, output_root
from trainbus.bus._secrets import redact
from trainbus.bus._sink import Sink
from trainbus.sinks._sdk_worker import SdkWorker, SinkState, imported_sdk
from trainbus.sinks._wandb_auth import LOGIN_HINT, needs_login
from trainbus.sinks._wandb_log import DurableFrontier, TransactionLog
from trainbus.sinks._wandb_rows import (
    SINGLE_VALUE_SCALARS,
    STEP_METRIC,
    artifact_aliases,
    artifact_metadata,
    artifact_name,
    histogram_edges,
    histogram_keys,
    log_row,
    predict_row,
)

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["LogModel", "SINGLE_VALUE_SCALARS", "WandbSink"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "wandb.json"
LogModel = Literal["end", "checkpoint", False]
_MODES: Final = frozenset({"online", "offline", "disabled", "shared"})
_MODE_ALIASES: Final = {"dryrun": "offline", "run": "online"}  # the SDK's older spellings
_WATCH: Final[Mapping[str, frozenset[HistogramSource]]] = {
    "false": frozenset(),
    "gradients": frozenset({"gradients"}),
    "parameters": frozenset({"parameters"}),
    "all": frozenset({"gradients", "parameters"}),
}
"""``WANDB_WATCH``'s values and the histograms each asks the trainer for."""


class _RunRefused(PermanentSinkError):
    """W&B refused the run itself (credentials, project, resumption): no point of the batch is
    to blame, so narrowing it point by point would only repeat the refusal."""


class WandbSink(Sink):
    """Deliver a run to Weights & Biases; see the module docstring."""

    name = "wandb"
    sdk_module = "wandb"
    prefers_sink_process = True  # its SDK does per-point Python work: off the training GIL
    events = (RunStarted, Log, Predict, Histograms, Artifact, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path,
        run_name: str = "",
        project: str = "huggingface",
        entity: str | None = None,
        mode: str | None = None,
        directory: Path | None = None,
        log_model: LogModel = False,
        watch: frozenset[HistogramSource] = frozenset(),
        flush_timeout: float = 60.0,
    ) -> None:
        """Parameters mirror HF's variables (see the module docstring): ``log_model`` is
        ``WANDB_LOG_MODEL``, ``watch`` the histograms ``WANDB_WATCH`` asks for; ``directory`` is
        where the SDK writes (default ``run_dir``); ``flush_timeout`` bounds the wait, after a
        run is finished offline, for its file to be complete."""
        if flush_timeout <= 0:
            raise ConfigurationError(
                f"flush_timeout must be a positive number of seconds, got {flush_timeout!r}."
            )
        mode = _MODE_ALIASES.get(mode, mode) if mode is not None else None
        if mode is not None and mode not in _MODES:
            raise ConfigurationError(
                f"WANDB_MODE must be one of online, offline, disabled or shared, got {mode!r}."
            )
        self.run_dir = run_dir
        self.run_name = run_name
        self.project = project
        self.entity = entity
        self.mode = mode
        self.directory = directory or run_dir
        self.log_model = log_model
        self.wants_final_model = log_model in ("end", "checkpoint")
        self.wants_histograms = watch
        self.flush_timeout = flush_timeout
        # A run the user started (``wandb.init`` before ``train()``) is adopted, as HF does: it
        # lives in this process, so the sink stays here with it.
        self.prefers_sink_process = getattr(imported_sdk("wandb"), "run", None) is None
        self._worker = SdkWorker(lambda: _map_errors(self._wandb))
        self._wandb: Any = None
        self._run: Any = None
        self._owns_run = False
        self._state = SinkState(run_dir / STATE_FILE)
        self._log_file: TransactionLog | None = None
        """The offline file of a run this sink finished, until it is complete on disk."""
        self._handed_seq = -1
        """The last event handed to the SDK by this sink (the state file's ``written_seq`` is
        the last one on disk, where W&B's offline file holds it)."""
        self._durable: DurableFrontier | None = None
        """How far the offline file of a run this sink owns holds what it was handed."""
        self._config_handed = False

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """For ``report_to="all"``: installed, not disabled, and able to start without a login
        (offline, or credentials found where the SDK looks for them)."""
        if importlib.util.find_spec("wandb") is None:
            return False
        mode = _mode(env)
        if env_flag(env, "WANDB_DISABLED", lenient=True) or mode == "disabled":
            return False
        return not needs_login(env, mode)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from HF's W&B variables (see the module docstring); an online run
        without credentials is refused here, before training."""
        if importlib.util.find_spec("wandb") is None:
            raise ConfigurationError(
                "report_to names wandb but the wandb package is not installed; install it "
                "with pip install 'trainbus[wandb]' or drop wandb from report_to."
            )
        if env_flag(env, "WANDB_DISABLED"):
            raise ConfigurationError(
                "report_to names wandb but WANDB_DISABLED is set; unset it or drop wandb from "
                "report_to."
            )
        directory = env_str(env, "WANDB_DIR")
        sink = cls(
            run_dir=run_dir,
            run_name=run_name,
            project=env_str(env, "WANDB_PROJECT") or "huggingface",
            entity=env_str(env, "WANDB_ENTITY"),
            mode=_mode(env),
            directory=Path(directory).expanduser() if directory else None,
            log_model=_log_model(env_str(env, "WANDB_LOG_MODEL")),
            watch=_watch(env_str(env, "WANDB_WATCH")),
        )
        if needs_login(env, sink.mode):
            raise ConfigurationError(
                "report_to names wandb, which would log online, but no W&B credentials were "
                f"found: {LOGIN_HINT}."
            )
        return sink

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Import the SDK only; the run starts at the first write, when its config is known."""
        self._state.load()
        self._handed_seq = self._state.written_seq
        self._wandb = await self._worker.call(_import_wandb)

    async def write(self, batch: Sequence[Event]) -> None:
        """Hand the batch to the SDK (summary, history, artifacts, finish), in order."""
        fresh = [event for event in batch if event.seq > self._handed_seq]
        if not fresh:
            return
        await self._worker.call(self._write, fresh)
        self._handed_seq = fresh[-1].seq
        await self._wait_for_log_file()
        await self._note_durable()

    async def close(self) -> None:
        """Finish a run this sink started whose ``RunFinished`` never came, as failed."""
        if self._run is not None and self._owns_run:
            await self._worker.call(self._finish, 1)
            await self._wait_for_log_file()
            await self._note_durable()
        self._run = None

    def durable_seq(self) -> int | None:
        """Offline, the last event W&B's offline file holds: what a crash would keep."""
        return self._state.written_seq if self._durable is not None else None

    def split(self, batch: Sequence[Event], error: PermanentSinkError) -> Sequence[Sequence[Event]]:
        """Halves, unless W&B refused the run itself: then no part would fare better."""
        if isinstance(error, _RunRefused):
            return ()
        return super().split(batch, error)

    @property
    def run_id(self) -> str | None:
        """The W&B run id, once the run started."""
        return str(self._run.id) if self._run is not None else self._state.get("wandb_run_id")

    # --- internals (event loop) ---------------------------------------------------------------

    async def _note_durable(self) -> None:
        """Move the state file's ``written_seq`` to the last event that is on disk.

        Online, or in a run the user started, that is the last event handed to the SDK: its
        service, or the user, owns the rest. Offline in a run of ours, it is what the run's
        transaction log holds, so that a restart after a crash hands the SDK the events the
        crash took with the service's memory.
        """
        durable = self._durable
        if durable is None:
            self._state.advance(self._handed_seq)
            return
        seq = await anyio.to_thread.run_sync(durable.advance)
        if seq is not None:
            self._state.advance(seq)
        if durable.log.complete:
            self._durable = None

    async def _wait_for_log_file(self) -> None:
        """Wait until the service has written the finished run's offline file in full.

        The service gives no signal when it does, so the file is checked, from where the last
        check stopped, at growing intervals; past ``flush_timeout`` the run is left to the service
        and the gap is logged, naming the file.
        """
        log_file, self._log_file = self._log_file, None
        if log_file is None:
            return
        delay = 0.005
        with anyio.move_on_after(self.flush_timeout):
            while not await anyio.to_thread.run_sync(log_file.ended):
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.25)
            return
        log.warning(
            "wandb offline file still incomplete after finish; the SDK's service may write it "
            "later",
            path=str(log_file.path),
            timeout_s=self.flush_timeout,
        )

    # --- internals (worker thread) ------------------------------------------------------------

    def _write(self, events: Sequence[Event]) -> None:
        for event in events:
            run = self._run if self._run is not None else self._start(event)
            durable, rows_before = self._durable, run.step
            self._write_one(run, event)
            if durable is not None:  # a finished run's step is not read: it ends the log anyway
                rows = rows_before if isinstance(event, RunFinished) else run.step
                durable.mark(event.seq, rows if rows > rows_before else rows + 1)

    def _write_one(self, run: Any, event: Event) -> None:
        if isinstance(event, Log):
            self._log(run, event)
        elif isinstance(event, Predict):
            row = predict_row(event.metrics, event.global_step)
            if row:
                run.log(row)
        elif isinstance(event, Histograms):
            self._log_histograms(run, event)
        elif isinstance(event, RunStarted):
            if not self._config_sent():
                run.config.update(_config(event), allow_val_change=True)
                self._note_config(event)
        elif isinstance(event, Artifact) and self._wants(event):
            self._log_artifact(run, event)
        elif isinstance(event, RunFinished) and self._owns_run:
            self._finish(1 if event.status in ("failed", "killed") else 0)

    def _start(self, first: Event) -> Any:
        wandb = self._wandb
        if wandb.run is not None:
            self._run, self._owns_run = wandb.run, False
        else:
            trial = first.trial if isinstance(first, RunStarted) else None
            name = (first.run_name if isinstance(first, RunStarted) else "") or self.run_name
            if trial is not None:
                name = trial.name
            saved = self._state.get("wandb_run_id")
            fresh = isinstance(first, RunStarted) and not self._config_sent()
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                self._run = wandb.init(
                    project=self.project,
                    entity=self.entity,
                    name=name or None,
                    group=trial.search if trial is not None else None,
                    dir=str(self.directory),
                    mode=self.mode,
                    id=saved,
                    resume="allow" if saved else None,
                    config=_config(first) if fresh and isinstance(first, RunStarted) else None,
                )
            except wandb.errors.CommError:
                raise  # the network: retried
            except wandb.errors.Error as exc:  # refused to start: the run's fault, not a point's
                raise _RunRefused(f"W&B refused to start the run: {exc}") from exc
            self._owns_run = True
            if fresh and isinstance(first, RunStarted):
                self._note_config(first)
        run = self._run
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
        self._state["wandb_run_id"] = str(run.id)
        self._state.save()
        if self._owns_run and run.offline:
            self._durable = DurableFrontier(TransactionLog(Path(run.settings.sync_file)))
        log.info("wandb run ready", run_id=str(run.id), mode=self.mode or "default")
        return run

    def _config_sent(self) -> bool:
        """Whether the run has its config: handed to the SDK by this sink, or on disk before
        (``config_sent``: a state file written before the offline file was followed)."""
        if self._config_handed or self._state.get("config_sent"):
            return True
        sent_at = self._state.get("config_seq")
        return isinstance(sent_at, int) and sent_at <= self._state.written_seq

    def _note_config(self, started: RunStarted) -> None:
        """Remember that the config went out (durably once its event is on disk), and what
        names the model artifact."""
        self._config_handed = True
        self._state["config_seq"] = started.seq
        self._state["run_name"] = started.run_name
        self._state["output_dir"] = started.output_dir
        self._state.save()

    def _finish(self, exit_code: int) -> None:
        run, self._run = self._run, None
        offline = bool(run.offline)
        run.finish(exit_code=exit_code)
        if self._durable is not None:
            self._log_file = self._durable.log
        elif offline:
            self._log_file = TransactionLog(Path(run.settings.sync_file))

    def _log(self, run: Any, event: Log) -> None:
        summary, row = log_row(event.logs, event.global_step)
        for key, value in summary.items():
            run.summary[key] = value
        if row:
            run.log(row)

    def _log_histograms(self, run: Any, event: Histograms) -> None:
        histogram = self._wandb.Histogram
        row: dict[str, Any] = {
            key: histogram(np_histogram=(h.counts, histogram_edges(h)))
            for key, h in histogram_keys(event).items()
        }
        if row:
            run.log({**row, STEP_METRIC: event.global_step})

    def _wants(self, event: Artifact) -> bool:
        if self.log_model == "checkpoint":
            return event.kind in ("checkpoint", "model")
        return self.log_model == "end" and event.kind == "model"

    def _log_artifact(self, run: Any, event: Artifact) -> None:
        source = Path(event.path)
        if not source.exists():
            log.warning("wandb artifact missing, skipped", path=str(source))
            return
        try:
            confined_files(source, output_root(self.run_dir), what="artifact path")
        except ConfigurationError as exc:
            log.warning("wandb artifact refused, skipped", reason=str(exc))
            return
        source = source.resolve()
        name = artifact_name(
            str(run.id), self._state.get("run_name", ""), self._state.get("output_dir", "")
        )
        metadata = artifact_metadata(dict(run.summary), event)
        artifact = self._wandb.Artifact(name=name, type="model", metadata=metadata)
        if source.is_dir():
            artifact.add_dir(str(source))
        else:
            artifact.add_file(str(source))
        run.log_artifact(artifact, aliases=artifact_aliases(event))


@contextlib.contextmanager
def _map_errors(wandb: Any) -> Iterator[None]:
    """The SDK's failures as the two errors the sink runtime acts on: network trouble is
    retried, a bad key or bad usage is not; anything else is a bug and stays as it is."""
    try:
        yield
    except SinkError:
        raise
    except Exception as exc:
        errors = getattr(wandb, "errors", None)
        if errors is not None and isinstance(exc, errors.AuthenticationError):
            raise _RunRefused(f"W&B refused the credentials: {exc}") from exc
        if errors is not None and isinstance(exc, errors.CommError):
            raise RetryableSinkError(f"W&B could not be reached: {exc}") from exc
        if errors is not None and isinstance(exc, errors.Error):
            raise PermanentSinkError(f"W&B refused the request: {exc}") from exc
        if isinstance(exc, OSError):
            raise RetryableSinkError(f"W&B could not write its files: {exc}") from exc
        raise


def _import_wandb() -> Any:
    import wandb

    return wandb


def _config(started: RunStarted) -> dict[str, Any]:
    """Model config overlaid by the arguments (arguments win), secrets masked."""
    return {**redact(started.hparams), **redact(started.config)}


def _mode(env: Mapping[str, str]) -> str | None:
    return (env_str(env, "WANDB_MODE") or "").lower() or None


def _log_model(raw: str | None) -> LogModel:
    value = (raw or "false").lower()
    if value == "end":
        return "end"
    if value == "checkpoint":
        return "checkpoint"
    if value != "false":
        log.warning(
            "WANDB_LOG_MODEL must be 'end', 'checkpoint' or 'false'; no model will be logged",
            value=raw,
        )
    return False


def _watch(raw: str | None) -> frozenset[HistogramSource]:
    value = (raw or "false").lower()
    if value not in _WATCH:
        log.warning(
            "WANDB_WATCH must be 'gradients', 'parameters', 'all' or 'false'; nothing is watched",
            value=raw,
        )
        return frozenset()
    return _WATCH[value]

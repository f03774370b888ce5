"""DVCLive: metrics history as TSV files, ``metrics.json``, ``params.yaml``, and, inside a DVC
repository, a DVC experiment, through DVCLive itself.

Mirrors Hugging Face's ``DVCLiveCallback``: ``RunStarted`` logs the training arguments as params
(secrets masked); each ``Log`` logs every value DVCLive can plot under DVCLive's own names for
the Hugging Face framework (``eval_loss`` -> ``eval/loss``, ``train_runtime`` ->
``train/runtime``, ``loss`` stays ``loss``); ``RunFinished`` ends the session, which saves the DVC
experiment. With ``HF_DVCLIVE_LOG_MODEL`` truthy the final model (``Artifact`` of kind
``model``) is copied into DVCLive's ``artifacts/`` and logged as the DVC model artifact ``last``
(``best`` with ``load_best_model_at_end``); with ``all`` every checkpoint is tracked by DVC too.
A ``Live`` of the caller's own (``DVCLiveSink(live=...)``) is used as it is.

Where the files go:

* In a DVC repository that can hold experiments (git, with a commit), found from the working
  directory as DVCLive does: ``./dvclive``, as transformers writes, with its ``dvc.yaml`` inside
  (``dvclive/dvc.yaml``: the user's own ``dvc.yaml`` is left alone). A stable path is what lets
  ``dvc exp show`` put every run's ``loss`` in one column; each run's files are kept by its
  experiment, so the next run replacing the workspace copy loses nothing.
* Anywhere else: ``<run_dir>/dvclive``, so two runs never wipe each other's files, and no
  ``dvc.yaml``. Where DVCLive would run ``dvc init`` in a git repository without DVC, nothing is
  initialised.

Where it differs from transformers, and why:

* The step is the event's ``global_step``, not a counter of log calls, so a TSV row lines up with
  the same point in TensorBoard or MLflow and a replayed batch lands on the same step.
* One experiment per training run: an ``evaluate()`` or ``predict()`` after ``train()`` continues
  the session and saves the same experiment again (its name is kept in ``<run_dir>/dvclive.json``)
  instead of adding a second one; ``predict()``'s ``test_*`` metrics are kept in ``metrics.json``
  as ``test/*`` (transformers logs nothing for it).
* ``all`` tracks each checkpoint directory, not the whole ``output_dir`` (which holds the run's
  journal and every earlier checkpoint), and still logs the final model.
* A metric name that would lead DVCLive's ``plots/metrics/<name>.tsv`` out of its directory
  (``../x``, an absolute name) is refused, counted in ``dropped_values`` and named once in a
  warning; an ``Artifact`` outside the run's output directory is skipped the same way.
* Replays never duplicate rows: the highest event written is kept in ``<run_dir>/dvclive.json``
  and a restarted sink resumes DVCLive's files instead of clearing them.

DVCLive's own variables (``DVCLIVE_LOGLEVEL``, ``DVC_EXP_NAME``, Studio settings ...) are read
by DVCLive. Every DVCLive call blocks, so it runs in a worker thread, one at a time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Artifact, Event, Log, Predict, RunFinished, RunStarted
from trainbus.bus._paths import confine, output_root, safe_relative_name
from trainbus.bus._secrets import redact
from trainbus.bus._sink import Sink
from trainbus.sinks._sdk_worker import SdkWorker, SinkState

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["DVCLiveSink", "LogModel"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "dvclive.json"
FRAMEWORK: Final = "dvclive.huggingface"
LogModel = Literal["all"] | bool


class DVCLiveSink(Sink):
    """Write a run through DVCLive; see the module docstring.

    Args:
        run_dir: the run's directory (state file, default directory outside DVC); built by
            ``report_to``. May be omitted with ``live``: the state then lives in this object.
        live: a ``dvclive.Live`` of the caller's own, used instead of one the sink creates, as
            transformers' ``DVCLiveCallback(live=...)``; the sink ends it at each run's end.
        directory: where DVCLive writes, instead of the default (see the module docstring).
        log_model: ``True`` logs the final model, ``"all"`` every checkpoint too.
        save_dvc_exp: save a DVC experiment at the end of the run where the repository allows.
        report: DVCLive's ``report`` (``"md"`` or ``"html"``), written at each batch.
    """

    name = "dvclive"
    sdk_module = "dvclive"
    prefers_sink_process = True  # its SDK does per-point Python work: off the training GIL
    events = (RunStarted, Log, Predict, Artifact, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path | None = None,
        live: Any = None,
        directory: Path | None = None,
        log_model: LogModel = False,
        save_dvc_exp: bool = True,
        report: Literal["md", "html"] | None = None,
    ) -> None:
        if run_dir is None and live is None:
            raise ConfigurationError("DVCLiveSink needs run_dir, or a dvclive.Live as live")
        if live is not None:
            _check_live(live)
        self.run_dir = run_dir
        self.directory = directory
        self.log_model = log_model
        self.save_dvc_exp = save_dvc_exp
        self.report = report
        self.wants_final_model = bool(log_model)
        self._user_live = live
        self._live: Any = None
        self._worker = SdkWorker(_map_errors)
        self._state = SinkState(run_dir / STATE_FILE if run_dir is not None else None)
        self._ended = False
        self._output_root: Path | None = output_root(run_dir) if run_dir is not None else None
        self.dropped_values = 0
        self._refused: set[str] = set()

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Chosen by ``report_to="all"`` when the ``dvclive`` package is installed, as in HF."""
        return importlib.util.find_spec("dvclive") is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """``HF_DVCLIVE_LOG_MODEL``: truthy logs the final model, ``all`` every checkpoint too."""
        if importlib.util.find_spec("dvclive") is None:
            raise ConfigurationError(
                "report_to names dvclive but the dvclive package is not installed; install it "
                "with pip install 'trainbus[dvclive]' or drop dvclive from report_to."
            )
        return cls(run_dir=run_dir, log_model=_log_model(env))

    # --- sink interface -----------------------------------------------------------------------

    @property
    def live(self) -> Any:
        """The ``dvclive.Live`` in use (``None`` before ``open()`` unless one was given)."""
        return self._live if self._live is not None else self._user_live

    async def open(self) -> None:
        """Start (or continue) the run's DVCLive session; see the module docstring for where."""
        self._state.load()
        self._ended = False
        if self._user_live is not None:
            self._live = self._user_live
            return
        self._live = await self._worker.call(self._start)
        self._state.save()
        log.info(
            "dvclive writing",
            directory=str(self._live.dir),
            experiment=self._state.get("experiment"),
            resumed=self._state.written_seq >= 0,
        )

    async def write(self, batch: Sequence[Event]) -> None:
        """Log the batch, then let DVCLive write its summary once."""
        await self._worker.write_fresh(self._state, batch, self._write)

    async def close(self) -> None:
        """Write the summary of a run that did not finish; ``end()`` already did for one that
        did."""
        if self._live is not None and not self._ended:
            await self._worker.call(self._live.sync)
        self._live = None

    # --- internals (worker thread) ------------------------------------------------------------

    def _start(self) -> Any:
        """A ``Live`` on the directory the first session chose, in the mode it chose."""
        from trainbus.sinks._dvclive_repo import experiment_root, live_class

        resume = self._state.written_seq >= 0
        experiment = self._state.get("experiment")
        root = experiment_root() if self.save_dvc_exp or experiment is not None else None
        if resume and experiment is not None:
            directory = self._experiment_directory(root)
        elif resume:
            directory, root = self._plain_directory(), None
        else:
            directory = (self.directory or self._default_directory(root)).absolute()
            if root is not None and root not in directory.parents:
                root = None  # a directory outside the repository cannot be in its experiment
        live = live_class()(
            dir=str(directory),
            resume=resume,
            report=self.report,
            save_dvc_exp=root is not None,
            dvcyaml=str(directory / "dvc.yaml") if root is not None else None,
            experiment=experiment,
        )
        if live.experiment_name is not None:
            self._state["experiment"] = live.experiment_name
            self._state["directory"] = str(directory)
        return live

    def _default_directory(self, root: Path | None) -> Path:
        return Path.cwd() / "dvclive" if root is not None else self._plain_directory()

    def _plain_directory(self) -> Path:
        if self.directory is not None:
            return self.directory
        if self.run_dir is None:  # only a given Live goes without run_dir, and it never gets here
            raise RuntimeError("DVCLiveSink without run_dir has no directory of its own")
        return self.run_dir / "dvclive"

    def _experiment_directory(self, root: Path | None) -> Path:
        """The continued experiment's directory, as the state file names it: only inside the
        repository around the working directory (the file is data, and data never picks where
        we write)."""
        saved = str(self._state.get("directory", ""))
        if root is None:
            raise PermanentSinkError(
                f"this run's DVCLive files are in the DVC experiment directory {saved!r}; run "
                "the replay from inside that DVC repository (its working directory decides it)"
            )
        try:
            return confine(saved, root, what=f"{STATE_FILE} directory")
        except ConfigurationError as exc:
            raise PermanentSinkError(str(exc)) from None

    def _write(self, events: Sequence[Event]) -> None:
        live = self._live
        for event in events:
            if isinstance(event, Log):
                self._log(live, event.logs, event.global_step, plot=True)
            elif isinstance(event, Predict):
                # A prediction's metrics are one value each: the summary, not a plot.
                self._log(live, _test_names(event.metrics), event.global_step, plot=False)
            elif isinstance(event, RunStarted):
                self._started(live, event)
            elif isinstance(event, Artifact) and self._wants(event):
                self._log_artifact(live, event)
            elif isinstance(event, RunFinished):
                live.end()
                self._ended = True
        if not self._ended:
            live.sync()

    def _started(self, live: Any, event: RunStarted) -> None:
        if self.run_dir is None and event.output_dir:
            self._output_root = Path(event.output_dir).resolve()
        if self._state.get("params_logged") or not event.config:
            return  # a continued run (evaluate() after train()) keeps its first params
        best = bool(event.config.get("load_best_model_at_end"))
        self._state["model_name"] = "best" if best else "last"
        self._state["params_logged"] = True
        from dvclive.error import InvalidParameterTypeError

        try:
            live.log_params(redact(event.config))
        except InvalidParameterTypeError as exc:
            # Params DVCLive cannot write as YAML must not cost the metrics that follow.
            log.warning("dvclive refused the params, dropped", error=str(exc))

    def _log(self, live: Any, logs: Mapping[str, Any], step: int, *, plot: bool) -> None:
        from dvclive.utils import standardize_metric_name

        live.step = step
        # ``end()`` takes the step back from the summary the last ``sync()`` wrote: without this,
        # a run whose last batch also ends it would finish metrics.json on that older step.
        live.summary["step"] = step
        for key, value in logs.items():
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            if not isinstance(value, (int, float, str)):
                self.dropped_values += 1
                continue
            name = standardize_metric_name(key, FRAMEWORK)
            try:
                # DVCLive writes plots/metrics/<name>.tsv: a name must not climb out of it.
                safe_relative_name(name, what="metric name")
            except ConfigurationError as exc:
                self.dropped_values += 1
                if name not in self._refused:
                    self._refused.add(name)
                    log.warning("dvclive metric refused, dropped", reason=str(exc))
                continue
            live.log_metric(name, value, plot=plot)

    def _log_artifact(self, live: Any, event: Artifact) -> None:
        try:
            if self._output_root is None:
                raise ConfigurationError("artifact path: the run's output directory is unknown")
            path = confine(event.path, self._output_root, what="artifact path")
        except ConfigurationError as exc:
            log.warning("dvclive artifact refused, skipped", reason=str(exc))
            return
        run_dir = self.run_dir.resolve() if self.run_dir is not None else None
        if run_dir is not None and (path == run_dir or path in run_dir.parents):
            # DVC would take over the run's own journal and state files.
            log.warning("dvclive artifact holds the run directory, skipped", path=str(path))
            return
        if event.kind == "model":
            name = str(self._state.get("model_name", "last"))
            live.log_artifact(str(path), type="model", name=name, copy=True)
        else:
            live.log_artifact(str(path))

    def _wants(self, event: Artifact) -> bool:
        if self.log_model == "all":
            return event.kind in ("model", "checkpoint")
        return bool(self.log_model) and event.kind == "model"


def _test_names(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``predict()``'s ``test_loss`` as ``test/loss``, DVCLive's split-folder convention that
    ``eval_`` and ``train_`` already follow."""
    return {
        f"test/{key[len('test_') :]}" if key.startswith("test_") else key: value
        for key, value in metrics.items()
    }


def _check_live(live: Any) -> None:
    from dvclive.live import Live

    if not isinstance(live, Live):
        raise ConfigurationError(
            f"DVCLiveSink(live=...) takes a dvclive.Live, got {type(live).__name__}"
        )


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """DVCLive's failures as the runtime's errors: a file system that refuses (full, read-only)
    may recover, data DVCLive rejects never will; anything else is a bug and stays as it is."""
    try:
        yield
    except OSError as exc:
        raise RetryableSinkError(f"DVCLive could not write its files: {exc}") from exc
    except Exception as exc:
        from dvclive.error import DvcLiveError

        if isinstance(exc, DvcLiveError):
            raise PermanentSinkError(f"DVCLive refused the data: {exc}") from exc
        raise


def _log_model(env: Mapping[str, str]) -> LogModel:
    raw = env_str(env, "HF_DVCLIVE_LOG_MODEL")
    if raw is None:
        return False
    if raw.lower() == "all":
        return "all"
    try:
        return env_flag(env, "HF_DVCLIVE_LOG_MODEL")
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (or 'all')") from None

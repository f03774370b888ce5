"""DVCLive: metrics history as TSV files, ``metrics.json``, ``params.yaml``, through DVCLive itself.

Mirrors Hugging Face's ``DVCLiveCallback``: ``RunStarted`` logs the training arguments as params
(secrets masked); each ``Log`` logs every value DVCLive can plot under DVCLive's own names for
the Hugging Face framework (``eval_loss`` -> ``eval/loss``, ``train_runtime`` ->
``train/runtime``, ``loss`` stays ``loss``); ``RunFinished`` ends the session. With
``HF_DVCLIVE_LOG_MODEL`` truthy the final model (``Artifact`` of kind ``model``) is logged as a
DVC model artifact, with ``all`` every checkpoint too (DVCLive needs a DVC repository for that
and warns otherwise).

Where it differs, and why:

* The step is the event's ``global_step``, not a counter of log calls, so a TSV row lines up with
  the same point in TensorBoard or MLflow and a replayed batch lands on the same step.
* The directory is ``<run_dir>/dvclive`` (a ``directory`` argument overrides it) rather than
  ``./dvclive``, so two runs from one working directory never wipe each other's files.
* The user's repository is left alone: no DVC experiment is saved and no ``dvc.yaml`` is
  written unless asked (``save_dvc_exp``, ``dvcyaml``), and where DVCLive would run ``dvc init``
  in a git repository without DVC, the sink uses no DVC repository at all.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Artifact, Event, Log, RunFinished, RunStarted
from trainbus.bus._paths import confine, output_root, safe_relative_name
from trainbus.bus._secrets import redact
from trainbus.bus._sink import Sink
from trainbus.sinks._state import load_state, save_state

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["DVCLiveSink", "LogModel"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "dvclive.json"
FRAMEWORK: Final = "dvclive.huggingface"
LogModel = Literal["all"] | bool
_T = TypeVar("_T")


class DVCLiveSink(Sink):
    """Write a run through DVCLive; see the module docstring."""

    name = "dvclive"
    sdk_module = "dvclive"
    events = (RunStarted, Log, Artifact, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path,
        directory: Path | None = None,
        log_model: LogModel = False,
        save_dvc_exp: bool = False,
        dvcyaml: bool = False,
        report: Literal["md", "html"] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.directory = directory or run_dir / "dvclive"
        self.log_model = log_model
        self.save_dvc_exp = save_dvc_exp
        self.dvcyaml = dvcyaml
        self.report = report
        self._live: Any = None
        self._limiter = anyio.CapacityLimiter(1)
        self._written_seq = -1
        self._ended = False
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
                "with pip install 'trainbus[integrations]' or drop dvclive from report_to."
            )
        return cls(run_dir=run_dir, log_model=_log_model(env))

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Start a DVCLive session on the directory, resuming it if an earlier sink wrote there."""
        state = load_state(self.run_dir / STATE_FILE)
        self._written_seq = int(state.get("written_seq", -1))
        resume = self._written_seq >= 0
        self._live = await self._call(self._start, resume)
        log.info("dvclive writing", directory=str(self.directory), resumed=resume)

    async def write(self, batch: Sequence[Event]) -> None:
        """Log the batch, then let DVCLive write its summary once."""
        fresh = [e for e in batch if e.seq > self._written_seq]
        if not fresh:
            return
        await self._call(self._write, fresh)
        self._written_seq = fresh[-1].seq
        save_state(self.run_dir / STATE_FILE, {"written_seq": self._written_seq})

    async def close(self) -> None:
        """Write the summary of a run that did not finish; ``end()`` already did for one that
        did."""
        if self._live is not None and not self._ended:
            await self._call(self._live.sync)
        self._live = None

    # --- internals (worker thread) ------------------------------------------------------------

    async def _call(self, func: Callable[..., _T], *args: Any) -> _T:
        with _map_errors():
            return await anyio.to_thread.run_sync(
                lambda: func(*args), limiter=self._limiter, abandon_on_cancel=True
            )

    def _start(self, resume: bool) -> Any:
        return _live_class()(
            dir=str(self.directory),
            resume=resume,
            report=self.report,
            save_dvc_exp=self.save_dvc_exp,
            dvcyaml="dvc.yaml" if self.dvcyaml else None,
        )

    def _write(self, events: Sequence[Event]) -> None:
        live = self._live
        for event in events:
            if isinstance(event, Log):
                self._log(live, event)
            elif isinstance(event, RunStarted) and event.config:
                self._log_params(live, event.config)
            elif isinstance(event, Artifact) and self._wants(event):
                self._log_artifact(live, event)
            elif isinstance(event, RunFinished):
                live.end()
                self._ended = True
        if not self._ended:
            live.sync()

    def _log_params(self, live: Any, config: Mapping[str, Any]) -> None:
        from dvclive.error import InvalidParameterTypeError

        try:
            live.log_params(redact(config))
        except InvalidParameterTypeError as exc:
            # Params DVCLive cannot write as YAML must not cost the metrics that follow.
            log.warning("dvclive refused the params, dropped", error=str(exc))

    def _log(self, live: Any, event: Log) -> None:
        from dvclive.utils import standardize_metric_name

        live.step = event.global_step
        for key, value in event.logs.items():
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
            live.log_metric(name, value)

    def _log_artifact(self, live: Any, event: Artifact) -> None:
        try:
            confine(event.path, output_root(self.run_dir), what="artifact path")
        except ConfigurationError as exc:
            log.warning("dvclive artifact refused, skipped", reason=str(exc))
            return
        name = event.name or Path(event.path).name
        live.log_artifact(event.path, type="model", name=_artifact_name(name))

    def _wants(self, event: Artifact) -> bool:
        if self.log_model == "all":
            return event.kind in ("model", "checkpoint")
        return bool(self.log_model) and event.kind == "model"


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


def _live_class() -> Any:
    """DVCLive's ``Live`` that uses an existing DVC repository but never creates one.

    Inside a git repository without DVC, ``Live()`` runs ``dvc init`` at the git root and stages
    its files; a metrics sink must not change the user's repository, so that step is skipped.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvclive.live import Live

    class ExistingRepoLive(Live):
        def _init_dvc(self) -> None:
            try:
                Repo.find_root()
            except NotDvcRepoError:
                return  # no DVC repository: plain files only, as DVCLive does outside git
            super()._init_dvc()

    return ExistingRepoLive


def _artifact_name(name: str) -> str:
    """A DVC artifact id: lower-case letters, digits and dashes."""
    cleaned = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return cleaned or "model"


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

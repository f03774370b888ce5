"""SwanLab through its SDK: in the cloud, or offline (one ``run-*.swanlab`` file, ``swanlab sync``).

Mirrors Hugging Face's ``SwanLabCallback``: the experiment is named after the run; its config is
the model config overlaid by the arguments (secrets masked) plus HF's ``FRAMEWORK`` marker; each
``Log`` logs HF's single-value scalars (``train_runtime``, ``train_loss``, ...) as
``single_value/<key>`` and everything else with HF's ``train/``/``eval/`` prefixes plus
``train/global_step``, all at ``step=global_step``; ``Predict`` metrics are logged with their
``test/`` prefix and no step. An active run the user started is reused and left open, as in HF.

Environment: ``SWANLAB_PROJECT`` (SwanLab falls back to the working directory's name),
``SWANLAB_MODE`` (``cloud``/``online``, ``offline``, ``local``, ``disabled``), ``SWANLAB_LOG_DIR``
(default: ``<run_dir>/swanlog``, where HF used ``./swanlog``), ``SWANLAB_RUN_ID`` and
``SWANLAB_RESUME`` (``must``/``allow``/``never``; unset while the arguments resume from a
checkpoint means ``allow``), and ``SWANLAB_LOG_MODEL``: ``end`` (or a true value) saves the final
model's files into the run, ``checkpoint`` every checkpoint's too, unset or false nothing (HF only
warns that it is not supported; SwanLab 0.10 has ``run.save``). ``SWANLAB_API_KEY`` and the host
variables are read by the SDK itself.

Where it differs, and why:

* Works with SwanLab 0.8 and later (HF's callback fails there with ``No active Run``).
* ``report_to="all"`` picks SwanLab only when it can start without prompting: ``SWANLAB_MODE``
  is ``offline`` or ``local``, or an API key is set or stored by ``swanlab login``. Named
  explicitly in cloud mode without credentials it is refused before training; the SDK never
  prompts (``interactive=False``), since it runs in a worker thread.
* One SwanLab experiment per trainbus run: its id is kept in ``<run_dir>/swanlab.json``, and
  ``evaluate()``/``predict()`` after ``train()`` resume it (config sent once). Offline, SwanLab
  writes each session to its own directory under the same id; ``swanlab sync`` merges them.
* The run is finished at ``RunFinished`` (``success``; ``crashed`` for a failed run,
  ``aborted`` for a killed one); HF never finishes it and leaves that to interpreter exit.
* Values SwanLab cannot chart (text, ``None``) are quarantined instead of sent; replays never
  log a point twice (the highest event handed to the SDK is kept in the state file).
* The number of model parameters is not in the config: sinks never see the model.

Every SDK call blocks, so it runs in a worker thread, one at a time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Artifact, Event, Log, Predict, RunFinished, RunStarted
from trainbus.bus._paths import confined_files, output_root
from trainbus.bus._secrets import redact
from trainbus.bus._sink import Sink
from trainbus.sinks._rewrite import rewrite_logs
from trainbus.sinks._sdk_worker import SdkWorker, SinkState, imported_sdk

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["FRAMEWORK", "LogModel", "SINGLE_VALUE_SCALARS", "SwanLabSink"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "swanlab.json"
FRAMEWORK: Final = "🤗transformers"
"""The ``FRAMEWORK`` config entry HF sets, which SwanLab shows as the run's framework."""
SINGLE_VALUE_SCALARS: Final = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
    }
)
"""Logged once per run; HF logs them as ``single_value/<key>`` instead of ``train/<key>``."""
LogModel = Literal["end", "checkpoint", False]
Mode = Literal["online", "offline", "local", "disabled"]
_MODES: Final[Mapping[str, Mode]] = {
    "cloud": "online",
    "online": "online",
    "offline": "offline",
    "local": "local",
    "disabled": "disabled",
}
_RESUMES: Final = frozenset({"must", "allow", "never"})
_FINISH_STATES: Final = {"failed": "crashed", "killed": "aborted"}
_INSTALL: Final = "pip install 'trainbus[swanlab]'"


class SwanLabSink(Sink):
    """Deliver a run to SwanLab; see the module docstring."""

    name = "swanlab"
    sdk_module = "swanlab"
    prefers_sink_process = True  # its SDK does per-point Python work: off the training GIL
    events = (RunStarted, Log, Predict, Artifact, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path,
        run_name: str = "",
        project: str | None = None,
        mode: Mode | None = None,
        log_dir: Path | None = None,
        run_id: str | None = None,
        resume: Literal["must", "allow", "never"] | None = None,
        log_model: LogModel = False,
    ) -> None:
        """Parameters mirror HF's variables (see the module docstring); ``log_dir`` is where the
        SDK writes (default ``run_dir/swanlog``); ``mode`` ``None`` lets the SDK decide."""
        self.run_dir = run_dir
        self.run_name = run_name
        self.project = project
        self.mode = mode
        self.log_dir = log_dir or run_dir / "swanlog"
        self.run_id = run_id
        self.resume = resume
        self.log_model = log_model
        self.wants_final_model = bool(log_model)
        # A run the user started (``swanlab.init`` before ``train()``) is adopted, as HF does: it
        # lives in this process, so the sink stays here with it.
        swanlab = imported_sdk("swanlab")
        self.prefers_sink_process = swanlab is None or not swanlab.has_run()
        self._worker = SdkWorker(_map_errors)
        self._swanlab: Any = None
        self._run: Any = None
        self._owns_run = False
        self._finished = False
        self._state = SinkState(run_dir / STATE_FILE)

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """For ``report_to="all"``: installed, not disabled, and able to start without a prompt."""
        if importlib.util.find_spec("swanlab") is None:
            return False
        mode = _MODES.get((env_str(env, "SWANLAB_MODE") or "online").lower())
        if mode in ("offline", "local"):
            return mode != "local" or importlib.util.find_spec("swanboard") is not None
        return mode == "online" and _has_credentials(env)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from HF's SwanLab variables (see the module docstring)."""
        if importlib.util.find_spec("swanlab") is None:
            raise ConfigurationError(
                "report_to names swanlab but the swanlab package is not installed; install it "
                f"with {_INSTALL} or drop swanlab from report_to."
            )
        raw_mode = env_str(env, "SWANLAB_MODE")
        mode = _MODES.get(raw_mode.lower()) if raw_mode else None
        if raw_mode and mode is None:
            raise ConfigurationError(
                f"SWANLAB_MODE={raw_mode!r} is not a SwanLab mode; expected one of cloud, "
                "online, offline, local or disabled."
            )
        if mode == "local" and importlib.util.find_spec("swanboard") is None:
            raise ConfigurationError(
                "SWANLAB_MODE=local needs the swanboard package (pip install swanboard); use "
                "SWANLAB_MODE=offline to write the run without it."
            )
        if mode in (None, "online") and not _has_credentials(env):
            raise ConfigurationError(
                "report_to names swanlab in cloud mode but no SwanLab API key is configured: "
                "set SWANLAB_API_KEY, run 'swanlab login', or set SWANLAB_MODE=offline."
            )
        resume = (env_str(env, "SWANLAB_RESUME") or "").lower() or None
        if resume is not None and resume not in _RESUMES:
            raise ConfigurationError(
                f"SWANLAB_RESUME={resume!r} is not a resume mode; expected must, allow or never."
            )
        log_dir = env_str(env, "SWANLAB_LOG_DIR")
        return cls(
            run_dir=run_dir,
            run_name=run_name,
            project=env_str(env, "SWANLAB_PROJECT"),
            mode=mode,
            log_dir=Path(log_dir).expanduser() if log_dir else None,
            run_id=env_str(env, "SWANLAB_RUN_ID"),
            resume=resume,  # type: ignore[arg-type]  # checked against _RESUMES above
            log_model=_log_model(env),
        )

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Import the SDK only; the experiment starts at the first write, when its config is
        known."""
        self._state.load()
        self._swanlab = await self._worker.call(_import_swanlab)

    async def write(self, batch: Sequence[Event]) -> None:
        """Hand the batch to the SDK (config, metrics, files, finish), in order."""
        await self._worker.write_fresh(self._state, batch, self._write)

    async def close(self) -> None:
        """Finish, as crashed, an experiment this sink started whose ``RunFinished`` never came."""
        if self._run is not None and self._owns_run and not self._finished:
            await self._worker.call(
                self._run.finish, "crashed", "the run ended without RunFinished"
            )
            self._finished = True
        self._run = None

    @property
    def experiment_id(self) -> str | None:
        """The SwanLab run id, once the experiment started (or from an earlier session)."""
        return str(self._run.id) if self._run is not None else self._state.get("swanlab_run_id")

    # --- internals (worker thread) ------------------------------------------------------------

    def _write(self, events: Sequence[Event]) -> None:
        for event in events:
            run = self._run if self._run is not None else self._start(event)
            if isinstance(event, Log):
                self._log(run, event)
            elif isinstance(event, Predict):
                self._log_predict(run, event)
            elif isinstance(event, RunStarted):
                self._log_config(run, event)
            elif isinstance(event, Artifact) and self._wants(event):
                self._save(run, event)
            elif isinstance(event, RunFinished) and self._owns_run:
                state = _FINISH_STATES.get(event.status, "success")
                run.finish(state, event.error or None if state == "crashed" else None)
                self._finished = True

    def _start(self, first: Event) -> Any:
        swanlab = self._swanlab
        if swanlab.has_run():
            # The user's run (HF reuses it and leaves it open), or ours if it is still alive.
            self._run = swanlab.get_run()
            self._owns_run = str(self._run.id) == self._state.get("swanlab_run_id")
        else:
            saved = self._state.get("swanlab_run_id")
            started = first if isinstance(first, RunStarted) else None
            resume = self.resume
            if saved:
                resume = "allow"  # continuing this trainbus run's own experiment
            elif (
                resume is None
                and started is not None
                and started.config.get("resume_from_checkpoint")
            ):
                resume = "allow"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with _hf_project_variable_hidden():
                self._run = swanlab.init(
                    project=self.project,
                    name=(started.run_name if started else "") or self.run_name or None,
                    mode=self.mode,
                    log_dir=str(self.log_dir),
                    id=saved or self.run_id,
                    resume=resume,
                    settings=swanlab.Settings(interactive=False),
                )
            self._owns_run = True
        if self._owns_run:  # a run the user started is theirs to finish, now and later
            self._state["swanlab_run_id"] = str(self._run.id)
            self._state.save()
        log.info("swanlab experiment ready", run_id=str(self._run.id), mode=self.mode or "default")
        return self._run

    def _log_config(self, run: Any, event: RunStarted) -> None:
        if self._state.get("config_sent"):
            return  # evaluate()/predict() after train(): the experiment has its config already
        config = {**redact(event.hparams), **redact(event.config), "FRAMEWORK": FRAMEWORK}
        run.config.update(config)
        self._state["config_sent"] = True

    def _log(self, run: Any, event: Log) -> None:
        step = event.global_step
        series: dict[str, Any] = {}
        for key, value in event.logs.items():
            if key in SINGLE_VALUE_SCALARS:
                self._log_at(run, event, {f"single_value/{key}": value}, step)
            else:
                series[key] = value
        self._log_at(run, event, {**rewrite_logs(series), "train/global_step": step}, step)

    def _log_predict(self, run: Any, event: Predict) -> None:
        """HF logs predictions without a step, which SwanLab puts one past the last step; the
        step is given here so that a new session (``predict()`` after ``train()``) agrees."""
        last = max(self._steps().values(), default=-1)
        self._log_at(run, event, rewrite_logs(event.metrics), last + 1)

    def _log_at(self, run: Any, event: Log | Predict, values: Mapping[str, Any], step: int) -> None:
        """Log the values SwanLab would keep: numbers, each at a step past its key's last one.

        SwanLab keeps one value per key and step (a second one, such as ``evaluate()`` after
        ``train()`` logging the final step's ``eval/loss`` again, is dropped with a warning);
        the last step per key is kept in the state file, so a later session, whose SwanLab
        counters start afresh offline, and a replay keep the same rule.
        """
        steps = self._steps()
        kept = {
            key: value
            for key, value in self._numeric(event, values).items()
            if step > steps.get(key, -1)
        }
        if kept:
            run.log(kept, step=step)
            steps.update(dict.fromkeys(kept, step))

    def _steps(self) -> dict[str, int]:
        steps: dict[str, int] = self._state.setdefault("last_steps", {})
        return steps

    def _numeric(self, event: Log | Predict, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values SwanLab charts (numbers; bools as ints); the rest is quarantined."""
        kept: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, bool):
                kept[key] = int(value)
            elif isinstance(value, (int, float)):
                kept[key] = value
            else:
                self.quarantine(event, "SwanLab charts numbers only", key=key)
        return kept

    def _wants(self, event: Artifact) -> bool:
        if self.log_model == "checkpoint":
            return event.kind in ("model", "checkpoint")
        return self.log_model == "end" and event.kind == "model"

    def _save(self, run: Any, event: Artifact) -> None:
        """Save the artifact's files into the run, named ``<directory name>/<file>``."""
        try:
            files = confined_files(event.path, output_root(self.run_dir), what="artifact path")
        except (ConfigurationError, OSError) as exc:
            log.warning("swanlab artifact refused, skipped", reason=str(exc))
            return
        base = Path(event.path).resolve().parent
        for file in files:
            run.save(str(file), base_path=str(base), policy="now")


def _import_swanlab() -> Any:
    import swanlab

    return swanlab


@contextlib.contextmanager
def _hf_project_variable_hidden() -> Iterator[None]:
    """Hide HF's ``SWANLAB_PROJECT=<name>`` from the SDK while it reads its settings.

    SwanLab 0.10 reads ``SWANLAB_PROJECT`` itself, as its nested ``project`` settings in JSON,
    and refuses to start on a plain name; the sink passes the name as ``project=`` instead.
    Runs in the sink's worker, one SDK call at a time; the variable is back when init returns.
    """
    value = os.environ.get("SWANLAB_PROJECT")
    if value is None or value.lstrip().startswith("{"):
        yield
        return
    del os.environ["SWANLAB_PROJECT"]
    try:
        yield
    finally:
        os.environ["SWANLAB_PROJECT"] = value


def _has_credentials(env: Mapping[str, str]) -> bool:
    """An API key in the environment, or one ``swanlab login`` stored (where the SDK looks)."""
    if env_str(env, "SWANLAB_API_KEY") is not None:
        return True
    root = env_str(env, "SWANLAB_ROOT") or env_str(env, "SWANLAB_SAVE_DIR")
    folders = [Path(root).expanduser()] if root else [Path.home() / ".swanlab"]
    folders.append(Path.cwd() / ".swanlab")
    return any((folder / ".netrc").is_file() for folder in folders)


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """SwanLab's failures as the runtime's errors: the network and the disk may recover; a
    refused login, a bad setting or a run SwanLab will not resume never will."""
    try:
        yield
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise RetryableSinkError(f"SwanLab could not write or reach its server: {exc}") from exc
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise PermanentSinkError(f"SwanLab refused the run: {exc}") from exc


def _log_model(env: Mapping[str, str]) -> LogModel:
    raw = (env_str(env, "SWANLAB_LOG_MODEL") or "").lower()
    if raw in ("end", "checkpoint"):
        return raw  # type: ignore[return-value]  # one of the two literals, checked above
    try:
        return "end" if env_flag(env, "SWANLAB_LOG_MODEL") else False
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (or 'end', 'checkpoint')") from None

"""TensorBoard event files: scalars with HF's ``train/``/``eval/`` prefixes, arguments as text.

Mirrors Hugging Face's ``TensorBoardCallback``: ``RunStarted`` writes the arguments (``args``)
and the model config (``model_config``) as text; each ``Log`` becomes scalars at its
``global_step`` after ``rewrite_logs`` (strings become text, other values are skipped).
``predict()``'s metrics (``Predict``, which transformers does not log) become ``test/*`` scalars
at the step the model was trained to. The directory is ``TENSORBOARD_LOGGING_DIR`` when set, else
``<output_dir>/runs/<Mon DD_HH-MM-SS>_<host>`` with the time of ``RunStarted``, so a replay finds
the same directory. A hyper-parameter search's trial (``RunStarted.trial``) trains in an
``output_dir`` of its own, so each trial gets a directory of its own by default; under
``TENSORBOARD_LOGGING_DIR`` it writes to ``<TENSORBOARD_LOGGING_DIR>/<trial name>``, as Hugging
Face's callback gives each named trial a directory. An ``evaluate()`` or ``predict()`` after
``train()`` continues the run in that directory (one more event file in it, one TensorBoard run)
and does not write the texts again.

By default events go through the minimal writer in ``trainbus.sinks._tfrecord`` (a few µs per scalar
instead of ~130 µs), flushed once per batch rather than once per event. An injected writer (HF's
``tb_writer``: anything with ``add_scalar``, ``add_text`` and ``flush``) is used as is instead.
The highest event written is remembered in ``<run_dir>/tensorboard.json``, so a replay after a
crash does not write points twice. Directories read from run data (that file's ``log_dir``,
``RunStarted.output_dir``) must lie inside the run's output directory, else the sink refuses them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from trainbus.bus._env import env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError
from trainbus.bus._events import Event, Log, Predict, RunFinished, RunStarted
from trainbus.bus._paths import confine, output_root, safe_relative_name
from trainbus.bus._secrets import redact
from trainbus.bus._sink import Sink
from trainbus.sinks._rewrite import rewrite_logs
from trainbus.sinks._state import load_state, save_state
from trainbus.sinks._tfrecord import EventFileWriter, encode_scalars, encode_text

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["SummaryWriterLike", "TensorBoardSink"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "tensorboard.json"


class SummaryWriterLike(Protocol):
    """The part of ``SummaryWriter`` (torch or tensorboardX) the sink uses."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = ...) -> Any: ...

    def add_text(self, tag: str, text_string: str, global_step: int | None = ...) -> Any: ...

    def flush(self) -> Any: ...


class TensorBoardSink(Sink):
    """Write a run's logs as TensorBoard event files; see the module docstring."""

    name = "tensorboard"
    events = (RunStarted, Log, Predict, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 0.5

    def __init__(
        self,
        *,
        run_dir: Path,
        logging_dir: Path | None = None,
        tb_writer: SummaryWriterLike | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.logging_dir = logging_dir
        self.tb_writer = tb_writer
        self._writer: EventFileWriter | None = None
        self._written_seq = -1
        self._trial = ""
        """The search trial's name (``RunStarted.trial``), kept for a replay that starts later."""

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Always: the built-in writer needs nothing beyond the standard library."""
        return True

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """``TENSORBOARD_LOGGING_DIR`` (``~`` expanded) picks the directory."""
        raw = env_str(env, "TENSORBOARD_LOGGING_DIR")
        return cls(run_dir=run_dir, logging_dir=Path(raw).expanduser() if raw else None)

    @property
    def log_dir(self) -> Path | None:
        """Where the event file is, once the first event decided it."""
        return self._writer.path.parent if self._writer is not None else self.logging_dir

    async def open(self) -> None:
        """Resume from ``tensorboard.json``; a ``log_dir`` there that leads out of the run's
        output directory is refused (the file is data, and data never picks where we write)."""
        state = load_state(self.run_dir / STATE_FILE)
        self._written_seq = int(state.get("written_seq", -1))
        self._trial = str(state.get("trial", ""))
        if self.logging_dir is None and state.get("log_dir"):
            self.logging_dir = self._confined(state["log_dir"], f"{STATE_FILE} log_dir")

    async def write(self, batch: Sequence[Event]) -> None:
        """Encode the batch, append it to the event file and flush once."""
        wrote = False
        for event in batch:
            if event.seq <= self._written_seq:
                continue
            if isinstance(event, (Log, Predict)):
                wrote |= self._log(event)
            elif isinstance(event, RunStarted):
                wrote |= self._started(event)
        if wrote:
            self._flush()
        if batch and batch[-1].seq > self._written_seq:
            self._written_seq = batch[-1].seq
            state = {
                "written_seq": self._written_seq,
                "log_dir": str(self.log_dir or ""),
                "trial": self._trial,
            }
            save_state(self.run_dir / STATE_FILE, state)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif self.tb_writer is not None:
            self.tb_writer.flush()

    # --- internals ----------------------------------------------------------------------------

    def _file(self, started: RunStarted | None) -> EventFileWriter:
        if self._writer is None:
            if started is not None and started.trial is not None:
                self._trial = started.trial.name
            directory = self.logging_dir
            if directory is None:
                directory = self._confined(_default_dir(started, self.run_dir), "output_dir")
            elif self._trial:
                directory = directory / _trial_folder(self._trial)
            self._writer = EventFileWriter(directory)
            log.info("tensorboard writing", log_dir=str(directory))
        return self._writer

    def _confined(self, path: str | Path, what: str) -> Path:
        try:
            return confine(path, output_root(self.run_dir), what=what)
        except ConfigurationError as exc:
            raise PermanentSinkError(str(exc)) from None

    def _started(self, event: RunStarted) -> bool:
        """Write the arguments and model config as texts, once per run: a ``continued`` start
        (``evaluate()``/``predict()`` after ``train()``) writes nothing; whether anything was."""
        if event.continued:
            if self.tb_writer is None:
                self._file(event)  # the directory is still the run's, even without the state
            return False
        texts = []
        if event.config:
            texts.append(("args", _json(event.config)))
        if event.hparams:
            texts.append(("model_config", _json(event.hparams)))
        if self.tb_writer is not None:
            for tag, text in texts:
                self.tb_writer.add_text(tag, text, 0)
            return True
        writer = self._file(event)
        for tag, text in texts:
            writer.write(encode_text(event.time, 0, tag, text))
        return True

    def _log(self, event: Log | Predict) -> bool:
        scalars: list[tuple[str, float]] = []
        texts: list[tuple[str, str]] = []
        logs = event.logs if isinstance(event, Log) else event.metrics
        for key, value in rewrite_logs(logs).items():
            if isinstance(value, (int, float)):
                scalars.append((key, float(value)))
            elif isinstance(value, str):
                texts.append((key, value))
        if not scalars and not texts:
            return False
        step = event.global_step
        if self.tb_writer is not None:
            for key, number in scalars:
                self.tb_writer.add_scalar(key, number, step)
            for key, text in texts:
                self.tb_writer.add_text(key, text, step)
            return True
        writer = self._file(None)
        if scalars:
            writer.write(encode_scalars(event.time, step, scalars))
        for key, text in texts:
            writer.write(encode_text(event.time, step, key, text))
        return True

    def _flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        elif self.tb_writer is not None:
            self.tb_writer.flush()


def _default_dir(started: RunStarted | None, run_dir: Path) -> Path:
    """HF's ``<output_dir>/runs/<Mon DD_HH-MM-SS>_<host>``, stamped with the run's start.

    ``output_dir`` is the one holding the run directory (``<output_dir>/trainbus/<run>``) when
    there is one: a replay from another working directory then finds the live run's folder even
    when ``RunStarted.output_dir`` was relative.
    """
    if started is None or not started.output_dir:
        return run_dir / "tensorboard"
    stamp = datetime.fromtimestamp(started.time).strftime("%b%d_%H-%M-%S")
    root = output_root(run_dir)
    output_dir = root if root != run_dir.resolve() else Path(started.output_dir)
    return output_dir / "runs" / f"{stamp}_{socket.gethostname()}"


def _trial_folder(name: str) -> str:
    """A trial's name as one folder name; run data never picks a path that climbs or nests."""
    try:
        safe_relative_name(name, what="trial name")
    except ConfigurationError as exc:
        raise PermanentSinkError(str(exc)) from None
    if "/" in name or "\\" in name:
        raise PermanentSinkError(f"trial name {name!r} is not one folder name, so it is refused")
    return name


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(redact(data), indent=2, sort_keys=True, default=str)

"""Flyte: checkpoints into the running task's checkpoint store, the log history as a Flyte Deck.

Mirrors Hugging Face's ``FlyteCallback``, and like it works only inside a Flyte task (local or
remote execution): each checkpoint the trainer saves (``Artifact`` of kind ``checkpoint``) is
pushed to ``flytekit.current_context().checkpoint``, so a retried task resumes from it with
``trainer.train(resume_from_checkpoint=current_context().checkpoint.restore())``; at the end of
the run the log history is rendered as a deck named "Log History".

Where it differs, and why:

* The deck is an HTML table written here (``sinks/_log_table.py``) and added with flytekit's
  own ``Deck``: no ``flytekitplugins-deck-standard`` or pandas needed, where Hugging Face
  silently turns the deck off without them.
* The deck is rendered when the run closes (``RunFinished``), also after ``evaluate()`` or
  ``predict()`` continue a run: it then shows the training rows (kept in
  ``<run_dir>/flyte.json``), the evaluation rows and the prediction metrics. flytekit shows one
  deck per name, the latest, so the task ends with one "Log History". A run that failed still
  gets its deck (Hugging Face renders it only at the end of a successful ``train()``).
* Checkpoints are pushed from the sink's worker thread, not on the training thread: training
  goes on while a checkpoint uploads. When the sink is behind, only the newest checkpoint of a
  batch is pushed (the store holds one checkpoint, the last pushed); one that rotation has
  already deleted is skipped with a warning.
* Rows are this run's ``Log`` events: after ``resume_from_checkpoint`` the deck starts at the
  resume (Hugging Face's ``log_history`` also holds the rows restored from the checkpoint).

flytekit keeps its task context in a context variable: it exists on the task's thread, and in
threads and event loops started from a copy of that thread's context (trainbus's bus loop is).
The sink captures the context where it is built and makes every flytekit call inside a copy of
it, so the calls see the task whichever worker thread makes them. Built outside a task, it
raises a ``ConfigurationError`` before training, and so it does with ``TRAINBUS_SINK_PROCESS``
set (the sink process has no task). ``report_to="all"`` never picks it, as in Hugging Face; it
does not take part in ``trainbus sync`` replays either (no task is running).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from trainbus.bus._env import SINK_PROCESS_VARIABLE, env_flag
from trainbus.bus._errors import ConfigurationError, RetryableSinkError
from trainbus.bus._events import Artifact, Event, Log, Predict, RunFinished
from trainbus.bus._paths import confine, output_root
from trainbus.bus._sink import Sink
from trainbus.sinks._log_table import log_table_html
from trainbus.sinks._sdk_worker import SdkWorker, SinkState

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["DECK_NAME", "FlyteSink"]

log = structlog.get_logger(__name__)

DECK_NAME: Final = "Log History"
"""The deck's name, Hugging Face's."""

STATE_FILE: Final = "flyte.json"
_T = TypeVar("_T")


class FlyteSink(Sink):
    """Push checkpoints to the running Flyte task and render its log history; see the module
    docstring.

    Args:
        run_dir: the run directory, where the rows of the log history are kept between the
            ``train()``, ``evaluate()`` and ``predict()`` of one run; ``None`` keeps them in memory.
        save_log_history: render the log history as the "Log History" deck.
        sync_checkpoints: push each checkpoint to the task's checkpoint store.

    Raises:
        ConfigurationError: flytekit is not installed, or no Flyte task is running here.
    """

    name = "flyte"
    sdk_module = "flytekit"
    events = (Log, Predict, Artifact, RunFinished)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path | None = None,
        save_log_history: bool = True,
        sync_checkpoints: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.save_log_history = save_log_history
        self.sync_checkpoints = sync_checkpoints
        self._context = contextvars.copy_context()
        self._context.run(_require_task)
        self._worker = SdkWorker(_map_errors)
        self._state = SinkState(run_dir / STATE_FILE if run_dir is not None else None)
        self._rows: list[dict[str, Any]] = []
        self.synced: list[str] = []
        """Checkpoint directories pushed to the store, in order (for logs and tests)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Built for ``report_to=["flyte"]``; Hugging Face reads no variable for Flyte."""
        if importlib.util.find_spec("flytekit") is None:
            raise ConfigurationError(
                "report_to names flyte but the flytekit package is not installed; install it "
                "with pip install 'trainbus[flyte]' or drop flyte from report_to."
            )
        if env_flag(env, SINK_PROCESS_VARIABLE, lenient=True):
            raise ConfigurationError(
                f"report_to names flyte with {SINK_PROCESS_VARIABLE} set: the Flyte integration "
                "needs the running task, which a separate sink process does not have; unset "
                f"{SINK_PROCESS_VARIABLE} or drop flyte from report_to."
            )
        return cls(run_dir=run_dir)

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Load the rows an earlier part of this run kept (``train()`` before ``evaluate()``)."""
        if self._state.path is not None:
            self._state.load()
            rows = self._state.get("rows", [])
            self._rows = [dict(row) for row in rows if isinstance(row, dict)]

    async def write(self, batch: Sequence[Event]) -> None:
        """Collect rows, push the newest checkpoint, render the deck when the run closes."""
        fresh = self._state.fresh(batch)
        if not fresh:
            return
        checkpoint: Artifact | None = None
        finished = False
        for event in fresh:
            if isinstance(event, Log):
                self._rows.append({**event.logs, "step": event.global_step})
            elif isinstance(event, Predict) and event.metrics:
                self._rows.append({**event.metrics, "step": event.global_step})
            elif isinstance(event, Artifact) and event.kind == "checkpoint":
                checkpoint = event
            elif isinstance(event, RunFinished):
                finished = True
        if checkpoint is not None and self.sync_checkpoints:
            await self._call(self._push, checkpoint)
        if finished and self.save_log_history:
            await self._call(self._render, list(self._rows))
        self._state["rows"] = self._rows
        self._state.advance(fresh[-1].seq, save=finished)

    # --- internals (worker thread, inside the task's context) --------------------------------

    async def _call(self, func: Callable[..., _T], *args: Any) -> _T:
        # A fresh copy per call: a context cannot be entered by two threads at once, and a call
        # abandoned at the close deadline may still be running.
        return await self._worker.call(lambda: self._context.copy().run(func, *args))

    def _push(self, event: Artifact) -> None:
        root = output_root(self.run_dir) if self.run_dir is not None else None
        try:
            path = confine(event.path, root, what="checkpoint path") if root else Path(event.path)
        except ConfigurationError as exc:
            log.warning("flyte checkpoint refused, skipped", reason=str(exc))
            return
        if not path.is_dir():
            log.warning("flyte checkpoint gone before it was pushed, skipped", path=str(path))
            return
        from flytekit import current_context

        current_context().checkpoint.save(path)
        self.synced.append(str(path))
        log.info("flyte checkpoint pushed", path=str(path))

    def _render(self, rows: list[dict[str, Any]]) -> None:
        from flytekit import Deck

        Deck(DECK_NAME, log_table_html(rows))  # flytekit shows the latest deck of a name


def _require_task() -> None:
    """Raise unless a Flyte task runs in the current context (it owns a checkpoint store)."""
    from flytekit import current_context

    try:
        current_context().checkpoint  # noqa: B018  # the property raises outside a task
    except NotImplementedError:
        raise ConfigurationError(
            "report_to names flyte but no Flyte task is running: the Flyte integration pushes "
            "checkpoints to the running task and renders its deck, so build and train the "
            "Trainer inside a @task function, or drop flyte from report_to."
        ) from None


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """An upload that failed (a full disk, an object store that did not answer) may pass."""
    from flytekit.exceptions.system import FlyteUploadDataException

    try:
        yield
    except (OSError, FlyteUploadDataException) as exc:
        raise RetryableSinkError(f"Flyte could not store the checkpoint: {exc}") from exc

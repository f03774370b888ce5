"""Azure ML (azureml-core): every number of every ``Log`` as one ``Run.log`` call.

Mirrors Hugging Face's ``AzureMLCallback``: the run is ``azureml.core.run.Run.get_context()``
(the job's run inside an Azure ML job, an offline run elsewhere) unless one is handed to the
constructor; each ``int``/``float`` (``bool`` included, as in Hugging Face) of each ``Log`` is
logged with ``run.log(key, value, description=key)``, keys unchanged, in the order they were
logged. Strings and other values are skipped.

Where it differs, and why:

* ``predict()``'s metrics (``Predict``: ``test_loss`` ...) are logged the same way; Hugging Face
  logs only what passes through ``on_log``, which ``predict()`` never calls.
* The calls run in a worker thread, one batch of events per thread hop, never on the training
  thread; on a submitted run each batch ends with ``run.flush()``, so an acknowledged batch has
  left azureml-core's upload queue.
* The highest event logged is kept in ``<run_dir>/azureml.json``: ``evaluate()`` and ``predict()``
  after ``train()`` log into the same job's run, and a replay never logs a point twice (Azure ML
  appends every ``log`` call to the metric's series).
* ``report_to="all"`` picks it, as Hugging Face does, only when MLflow is not installed, and (our
  addition) only inside an Azure ML job (``AZUREML_RUN_ID`` set): outside one, azureml-core's
  offline run prints every value to standard output and keeps nothing.

Azure ML's current way to track runs is MLflow with the workspace's ``azureml://`` tracking URI,
which the MLflow sink serves. azureml-core is heavy to import, so it is imported in ``open()``,
in the worker thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from trainbus.bus._env import env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Event, Log, Predict
from trainbus.bus._sink import Sink
from trainbus.sinks._sdk_worker import SdkWorker, SinkState

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["AzureMLSink"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "azureml.json"
RUN_MODULE: Final = "azureml.core.run"


class AzureMLSink(Sink):
    """Log every number of every ``Log`` and ``Predict`` to an Azure ML run; see the module
    docstring.

    Args:
        run_dir: where the replay watermark is kept (``None``: in memory only).
        run: the Azure ML run to log to: an ``azureml.core.run.Run``, or any object with its
            ``log(name, value, description=...)`` (tests pass a recording subclass of the offline
            run, since an offline run keeps nothing). ``None``: ``Run.get_context()`` in
            ``open()``.
    """

    name = "azure_ml"
    sdk_module = "azureml"  # not the submodule: the registry's probe cannot take a dotted name
    # whose parent is missing; ``open()`` imports ``azureml.core.run`` itself
    events = (Log, Predict)
    max_batch_size = 1024
    max_batch_latency = 1.0

    def __init__(self, *, run_dir: Path | None = None, run: Any = None) -> None:
        self.run_dir = run_dir
        self.run = run
        self._worker = SdkWorker(_map_errors)
        self._state = SinkState(run_dir / STATE_FILE if run_dir is not None else None)
        self.logged_values = 0
        """Values handed to ``run.log`` by this sink (for logs and tests)."""

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """For ``report_to="all"``: azureml-core installed, inside an Azure ML job
        (``AZUREML_RUN_ID``; see the module docstring). The registry leaves it out when MLflow
        is picked (an Azure ML job logs through MLflow; both would log every metric twice)."""
        return _installed(RUN_MODULE) and env_str(env, "AZUREML_RUN_ID") is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Built for ``report_to=["azure_ml"]``; azureml-core reads its own variables."""
        if not _installed(RUN_MODULE):
            raise ConfigurationError(
                "report_to names azure_ml but the azureml-core package is not installed; install "
                "it with pip install 'trainbus[azureml]' or drop azure_ml from report_to."
            )
        return cls(run_dir=run_dir)

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Find the run (the job's, or an offline one) and the last event already logged."""
        self._state.load()
        if self.run is None:
            self.run = await self._worker.call(_context_run)
        log.info("azure_ml logging", run_id=str(getattr(self.run, "id", "")))

    async def write(self, batch: Sequence[Event]) -> None:
        """Log the batch's numbers in one worker-thread call, then move the watermark."""
        fresh = [e for e in self._state.fresh(batch) if isinstance(e, (Log, Predict))]
        if not fresh:
            return
        await self._worker.call(self._log, fresh)
        self._state.advance(fresh[-1].seq)

    # --- internals (worker thread) ------------------------------------------------------------

    def _log(self, events: Sequence[Log | Predict]) -> None:
        run = self.run
        for event in events:
            values = event.logs if isinstance(event, Log) else event.metrics
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    run.log(key, value, description=key)
                    self.logged_values += 1
        from azureml.core.run import Run

        if isinstance(run, Run):  # a submitted run uploads in the background: wait for it
            run.flush()


def _context_run() -> Any:
    from azureml.core.run import Run

    return Run.get_context()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package that is missing (``azureml`` for ``azureml.core``)
        return False


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """azureml-core's failures as the runtime's: what the user got wrong never passes, a service
    or network failure may; anything else is a bug and stays as it is."""
    try:
        yield
    except OSError as exc:
        raise RetryableSinkError(f"Azure ML could not be reached: {exc}") from exc
    except Exception as exc:
        from azureml.exceptions import AzureMLException, UserErrorException

        if isinstance(exc, UserErrorException):
            raise PermanentSinkError(f"Azure ML refused the metrics: {exc}") from exc
        if isinstance(exc, AzureMLException):
            raise RetryableSinkError(f"Azure ML failed: {exc}") from exc
        raise

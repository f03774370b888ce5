"""CodeCarbon: the energy and CO2 of training, one row of ``<output_dir>/emissions.csv`` per run.

Mirrors Hugging Face's ``CodeCarbonCallback``: an emissions tracker writing to the run's
``output_dir`` is made when the run starts, started when training begins (``TrainBegin``) and
stopped when it ends (``TrainEnd``), which writes the row. ``evaluate()`` and ``predict()`` on
their own measure nothing, as in HF. CodeCarbon reads the rest of its settings itself
(``CODECARBON_*`` variables, ``.codecarbon.config`` in the working and home directories).

Where it differs, and why:

* Without network: when CodeCarbon's configuration names a country (``country_iso_code``,
  e.g. ``CODECARBON_COUNTRY_ISO_CODE=FRA``), the sink uses ``OfflineEmissionsTracker``, which
  never looks the machine up on the internet; otherwise HF's ``EmissionsTracker``, whose
  geographic lookup falls back to a default country when it cannot reach its services.
* A run that fails or is killed after training began still gets its row: the tracker is
  stopped at ``RunFinished`` (or when the sink closes) if ``TrainEnd`` never came.
* Building and starting a tracker takes one to two seconds (hardware probing): it happens in a
  worker thread, never on the training thread. The tracker measures the process it runs in:
  the training process, or the sink process under ``TRAINBUS_SINK_PROCESS=1`` (CodeCarbon
  measures the whole machine's CPU and GPU either way in its default ``machine`` mode).
* A ``TrainBegin`` replayed long after it happened (``trainbus sync``) is not measured: the
  tracker would measure the machine now, not the run.
* One tracker per machine, as in HF (local rank zero, from ``LOCAL_RANK``). ROCm builds are
  not refused: the sink never imports torch, and CodeCarbon 3 measures what it can.
* The emissions are not added to the run's metrics (HF does not either); the sink logs them
  once, with the energy and duration, when the tracker stops.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from trainbus.bus._env import env_int
from trainbus.bus._errors import ConfigurationError, RetryableSinkError
from trainbus.bus._events import Event, EventBase, RunFinished, RunStarted, TrainBegin, TrainEnd
from trainbus.bus._sink import Sink
from trainbus.sinks._sdk_worker import SdkWorker, SinkState

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["CodeCarbonSink"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "codecarbon.json"


class CodeCarbonSink(Sink):
    """Track a run's emissions with CodeCarbon; see the module docstring."""

    name = "codecarbon"
    sdk_module = "codecarbon"
    events: tuple[type[EventBase], ...] | None = (RunStarted, TrainBegin, TrainEnd, RunFinished)
    world_rank_zero_only = False  # one tracker per machine: local rank zero (see __init__)
    max_batch_latency = 0.05  # TrainBegin starts the measurement: deliver it at once

    def __init__(
        self,
        *,
        run_dir: Path,
        output_dir: Path | None = None,
        local_rank: int = 0,
        max_start_delay: float = 60.0,
    ) -> None:
        """Args:
        run_dir: the run's directory (the sink keeps its replay watermark there).
        output_dir: where ``emissions.csv`` goes; ``None``: the run's ``output_dir``, as HF.
        local_rank: the process's rank on its machine; only local rank zero measures.
        max_start_delay: a ``TrainBegin`` older than this many seconds when it arrives is
            a replay, not a run, and is not measured.
        """
        if max_start_delay <= 0:
            raise ConfigurationError(
                f"max_start_delay must be a positive number of seconds, got {max_start_delay!r}."
            )
        self.run_dir = run_dir
        self.output_dir = output_dir
        self.local_rank = local_rank
        self.max_start_delay = max_start_delay
        if local_rank != 0:
            self.events = ()  # another process on this machine measures it
        self._worker = SdkWorker(_map_errors)
        self._tracker: Any = None
        self._running = False
        self._state = SinkState(run_dir / STATE_FILE)

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Chosen by ``report_to="all"`` when the ``codecarbon`` package is installed, as in HF:
        it writes one local file and needs no account."""
        return importlib.util.find_spec("codecarbon") is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink; CodeCarbon reads its own ``CODECARBON_*`` variables when it starts."""
        if importlib.util.find_spec("codecarbon") is None:
            raise ConfigurationError(
                "report_to names codecarbon but the codecarbon package is not installed; "
                "install it with pip install 'trainbus[codecarbon]' or drop codecarbon from "
                "report_to."
            )
        return cls(run_dir=run_dir, local_rank=env_int(env, "LOCAL_RANK") or 0)

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Read the replay watermark; the tracker is made when the run's ``RunStarted`` comes."""
        self._state.load()

    async def write(self, batch: Sequence[Event]) -> None:
        """Make, start or stop the tracker, as the events say."""
        await self._worker.write_fresh(self._state, batch, self._write)

    async def close(self) -> None:
        """Stop a tracker still running (the run ended without ``TrainEnd`` or
        ``RunFinished``), so its row is written."""
        if self._running:
            await self._worker.call(self._stop)
        self._tracker = None

    # --- internals (worker thread) ------------------------------------------------------------

    def _write(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, RunStarted) and self._tracker is None:
                self._tracker = self._make(event)
            elif isinstance(event, TrainBegin) and self._tracker is not None:
                self._start(event)
            elif isinstance(event, (TrainEnd, RunFinished)) and self._running:
                self._stop()

    def _make(self, started: RunStarted) -> Any:
        from codecarbon import EmissionsTracker, OfflineEmissionsTracker

        config: Any = importlib.import_module("codecarbon.core.config")  # untyped

        directory = self.output_dir or Path(started.output_dir or self.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        offline = bool(config.get_hierarchical_config().get("country_iso_code"))
        tracker_class = OfflineEmissionsTracker if offline else EmissionsTracker
        log.info("codecarbon tracker ready", output_dir=str(directory), offline=offline)
        return tracker_class(output_dir=str(directory))

    def _start(self, event: TrainBegin) -> None:
        late = time.time() - event.time
        if late > self.max_start_delay:
            log.warning(
                "codecarbon: TrainBegin is a replay, not measured", seconds_late=round(late, 1)
            )
            return
        self._tracker.start()
        self._running = True

    def _stop(self) -> None:
        self._running = False
        emissions = self._tracker.stop()
        data = self._tracker.final_emissions_data
        log.info(
            "codecarbon emissions",
            emissions_kg=emissions,
            energy_kwh=getattr(data, "energy_consumed", None),
            duration_s=getattr(data, "duration", None),
        )


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """A file system that refuses ``emissions.csv`` (full, read-only) may recover; anything
    else CodeCarbon raises is a bug and stays as it is."""
    try:
        yield
    except OSError as exc:
        raise RetryableSinkError(f"CodeCarbon could not write its file: {exc}") from exc

"""A sink that blocks the event loop stops neither training, nor the journal, nor the shutdown.

The sinks here block the loop's thread synchronously, as a ``time.sleep`` or a synchronous client
would, until the test releases them: released only after ``train()`` returned, so ``train()``
returning at all shows that nothing waited for them (a hang ends in the module's time limit).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.trainer.recording import time_limit  # noqa: F401  (autouse)
from trainbus.bus import Bus, JournalReader, Sink
from trainbus.bus._events import Event, Save, StepEnd
from trainbus.bus.testing import RecordingSink
from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
from trainbus.trainer.testing import RegressionDataset, TinyRegressor

STEPS = 12
SAVE_STEPS = 4
GATE_LIMIT_S = 60.0
"""Longest a sink blocks if a test never releases it (the test has failed by then)."""


class BlockingSink(Sink):
    """Blocks the loop's thread in ``write`` (or ``close``) until ``gate`` is set."""

    name = "blocking"
    max_batch_latency = 0.0

    def __init__(self, *, block_in: str) -> None:
        self.block_in = block_in
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seqs: list[int] = []

    def _block(self) -> None:
        self.entered.set()
        self.gate.wait(GATE_LIMIT_S)  # synchronous: nothing else runs on the loop meanwhile

    async def write(self, batch: Sequence[Event]) -> None:
        if self.block_in == "write":
            self._block()
        self.seqs.extend(event.seq for event in batch)

    async def close(self) -> None:
        if self.block_in == "close":
            self._block()


class JournalLauncher:
    """Opens a bus with a journal and a short watchdog, and keeps it for the test to inspect."""

    def __init__(self, journal: Path, sinks: Sequence[Sink], *, queue_size: int = 8192) -> None:
        self.journal = journal
        self.sinks = sinks
        self.queue_size = queue_size
        self.bus: Bus | None = None

    def open_run(self, trainer: Trainer) -> Bus:
        self.bus = Bus(
            run_id="blocking-run",
            journal_path=self.journal,
            cursor_dir=self.journal.parent / "cursors",
            sinks=self.sinks,
            close_deadline=1.0,
            stall_after=0.5,
            queue_size=self.queue_size,
        )
        return self.bus


class ReleaseAtEnd(TrainerCallback):
    """Holds step 1 until the sink blocks the loop, and releases the sink when training ends."""

    def __init__(self, sink: BlockingSink) -> None:
        self.sink = sink

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 1:
            assert self.sink.entered.wait(GATE_LIMIT_S), "the sink never wrote"

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sink.gate.set()


def _trainer(
    tmp_path: Path, launcher: JournalLauncher, callbacks: Sequence[TrainerCallback] = ()
) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_steps=1,
        disable_tqdm=True,
        report_to="none",
        use_cpu=True,
    )
    return Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(16),
        callbacks=list(callbacks),
        launcher=launcher,
    )


def _journaled(path: Path) -> list[Event]:
    return list(JournalReader(path).read_from(0))


@pytest.fixture
def released() -> Iterator[list[BlockingSink]]:
    """Sinks to release after the test, so no loop thread stays blocked behind it."""
    sinks: list[BlockingSink] = []
    yield sinks
    for sink in sinks:
        sink.gate.set()


def test_blocking_write_stops_neither_training_nor_journal_nor_shutdown(
    tmp_path: Path, released: list[BlockingSink]
) -> None:
    """A write that blocks the loop: training and saves finish, every step is journaled, and the
    close ends past its deadline with the sink named and its backlog reported as undelivered."""
    blocking = BlockingSink(block_in="write")
    released.append(blocking)
    other = RecordingSink(max_batch_latency=0.0)
    launcher = JournalLauncher(tmp_path / "run" / "journal.tbj", [blocking, other])
    trainer = _trainer(tmp_path, launcher)
    with capture_logs() as logs:
        trainer.train()
    assert blocking.entered.is_set()
    events = _journaled(launcher.journal)
    steps = [e.global_step for e in events if isinstance(e, StepEnd)]
    assert steps == list(range(1, STEPS + 1))
    assert [e.global_step for e in events if isinstance(e, Save)] == [4, 8, 12]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "checkpoint-12",
        "checkpoint-4",
        "checkpoint-8",
    ]
    blocked = [entry for entry in logs if entry["event"] == "event_loop_blocked"]
    assert [(entry["sink"], entry["call"]) for entry in blocked] == [("blocking", "write")]
    assert launcher.bus is not None and launcher.bus.report is not None
    report = launcher.bus.report["blocking"]
    assert report.undelivered > 0
    assert report.acknowledged_seq + report.undelivered <= events[-1].seq + 1
    abandoned = [entry for entry in logs if entry["event"] == "bus_close_abandoned"]
    assert abandoned and abandoned[0]["sink"] == "blocking"


def test_a_sink_released_before_the_close_gets_every_event_once(tmp_path: Path) -> None:
    """Events journaled while the loop was blocked (more than the bus keeps in memory) reach
    every sink exactly once after the loop is back, from memory or from the journal."""
    blocking = BlockingSink(block_in="write")
    other = RecordingSink(max_batch_latency=0.0)
    launcher = JournalLauncher(tmp_path / "journal.tbj", [blocking, other], queue_size=8)
    trainer = _trainer(tmp_path, launcher, [ReleaseAtEnd(blocking)])
    with capture_logs() as logs:
        trainer.train()
    journaled = [e.seq for e in _journaled(launcher.journal)]
    assert sorted(blocking.seqs) == journaled
    assert sorted(e.seq for e in other.received) == journaled
    assert launcher.bus is not None and launcher.bus.report is not None
    assert {r.undelivered for r in launcher.bus.report.values()} == {0}
    assert any(entry["event"] == "bus_offers_from_journal" for entry in logs)


def test_blocking_close_is_bounded_and_the_journal_complete(
    tmp_path: Path, released: list[BlockingSink]
) -> None:
    """A close that blocks the loop: ``train()`` returns past the close deadline with a complete,
    closed journal, and the warning names the sink and its ``close``."""
    blocking = BlockingSink(block_in="close")
    released.append(blocking)
    launcher = JournalLauncher(tmp_path / "run" / "journal.tbj", [blocking])
    trainer = _trainer(tmp_path, launcher)
    with capture_logs() as logs:
        trainer.train()
    assert blocking.entered.is_set()
    events = _journaled(launcher.journal)
    assert [e.global_step for e in events if isinstance(e, StepEnd)] == list(range(1, STEPS + 1))
    assert type(events[-1]).__name__ == "RunFinished"
    blocked = [entry for entry in logs if entry["event"] == "event_loop_blocked"]
    assert [(entry["sink"], entry["call"]) for entry in blocked] == [("blocking", "close")]
    assert launcher.bus is not None and launcher.bus.report is not None
    assert launcher.bus.report["blocking"].undelivered == 0  # everything was written before


def test_the_process_exits_while_a_sink_sleeps_in_write(tmp_path: Path) -> None:
    """A script whose sink sleeps an hour in ``write`` still exits 0, its journal complete."""
    journal = tmp_path / "run" / "journal.tbj"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from trainbus.bus import Bus, Sink
        from trainbus.trainer import Trainer, TrainingArguments
        from trainbus.trainer.testing import RegressionDataset, TinyRegressor

        class Sleeper(Sink):
            max_batch_latency = 0.0

            async def write(self, batch):
                time.sleep(3600)

        class Launcher:
            def open_run(self, trainer):
                return Bus(run_id="sleeper", journal_path={str(journal)!r}, sinks=[Sleeper()],
                           close_deadline=1.0, stall_after=0.5)

        args = TrainingArguments(output_dir={str(tmp_path / "out")!r}, max_steps={STEPS},
                                 per_device_train_batch_size=4, save_strategy="steps",
                                 save_steps={SAVE_STEPS}, disable_tqdm=True, report_to="none",
                                 use_cpu=True)
        Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(16),
                launcher=Launcher()).train()
        print("trained", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout
    events = _journaled(journal)
    assert [e.global_step for e in events if isinstance(e, StepEnd)] == list(range(1, STEPS + 1))

"""The bus's training side: envelopes, burst wake-ups, barriers in both threading models, fsync."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from structlog.testing import capture_logs

from tests.bus.conftest import MakeBus
from trainbus.bus import (
    Bus,
    Event,
    EventBase,
    JournalReader,
    Log,
    StepBegin,
    StepEnd,
    TrainBegin,
)
from trainbus.bus._errors import ConfigurationError, JournalError
from trainbus.bus.testing import RecordingSink, capture_events


@dataclass(frozen=True)
class Control:
    """A stand-in for TrainerControl: the bus only threads it through."""

    should_stop: bool = False
    trail: tuple[str, ...] = ()


async def test_emit_fills_the_envelope_and_journals(make_bus: MakeBus, tmp_path: Path) -> None:
    """emit() sets run_id, increasing seq, time and rank; every event reaches the journal."""
    with anyio.fail_after(10):
        async with make_bus(rank=0) as bus:
            first = bus.emit(TrainBegin, max_steps=3)
            second = bus.emit(StepEnd, global_step=1, epoch=0.5)
    assert (first.run_id, first.seq, first.rank, first.max_steps) == ("test-run", 0, 0, 3)
    assert second.seq == 1 and second.time >= first.time > 0
    assert list(JournalReader(tmp_path / "journal.tbj").read_from()) == [first, second]


async def test_publish_marks_keeps_order_and_the_callers_times(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """publish_marks() (a step's envelope-only events, stamped as they happened) gives them the
    next seqs in order, with the times the caller took and this bus's envelope."""
    with anyio.fail_after(10):
        async with make_bus(rank=0) as bus:
            first = bus.emit(TrainBegin, max_steps=3)
            bus.publish_marks([(StepBegin, 10.0, 0, 0.0), (StepEnd, 11.0, 1, 0.5)])
            last = bus.emit(StepEnd, global_step=2, epoch=1.0)
    events = list(JournalReader(tmp_path / "journal.tbj").read_from())
    assert [type(e) for e in events] == [TrainBegin, StepBegin, StepEnd, StepEnd]
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert [e.time for e in events[1:3]] == [10.0, 11.0]
    marked = events[2]
    assert (marked.run_id, marked.rank, marked.global_step, marked.epoch) == ("test-run", 0, 1, 0.5)
    assert events[0] == first and events[3] == last


async def test_publish_restamps_a_ready_made_event(make_bus: MakeBus) -> None:
    """publish() gives a foreign event this bus's seq, run_id and rank."""
    with anyio.fail_after(10):
        async with make_bus() as bus:
            bus.emit(StepEnd, global_step=1)
            event = bus.publish(Log(run_id="other", seq=99, time=1.0, rank=3, logs={"loss": 1.0}))
    assert (event.run_id, event.seq, event.rank, event.logs) == ("test-run", 1, 0, {"loss": 1.0})


async def test_the_publishing_methods_called_through_the_class_publish_alike(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Bus.emit(bus, ...), Bus.publish and Bus.publish_marks number and journal like bus.emit."""
    with anyio.fail_after(10):
        async with make_bus() as bus:
            bus.emit(StepEnd, global_step=0)
            Bus.emit(bus, StepEnd, global_step=1)
            Bus.publish(bus, StepEnd(run_id="other", seq=7, time=1.0, global_step=2))
            Bus.publish_marks(bus, [(StepEnd, 1.0, 3, 0.0)])
    events = list(JournalReader(tmp_path / "journal.tbj").read_from())
    assert [(e.seq, e.global_step, e.run_id) for e in events] == [
        (i, i, "test-run") for i in range(4)
    ]


async def test_a_burst_costs_one_wake_up(make_bus: MakeBus) -> None:
    """Publishing many events before the loop runs schedules one wake-up, not one per event."""
    with anyio.fail_after(10):
        async with make_bus() as bus, capture_events(bus) as events:
            calls = 0
            real = bus._outbox._call_soon
            assert real is not None

            def counting(callback: Any) -> object:
                nonlocal calls
                calls += 1
                return real(callback)

            bus._outbox._call_soon = counting
            for step in range(1000):
                bus.emit(StepEnd, global_step=step)
            await bus.drain()
            bus.emit(StepEnd, global_step=1000)
    assert calls == 2
    assert [e.global_step for e in events] == list(range(1001))


async def test_events_published_from_threads_all_arrive(make_bus: MakeBus) -> None:
    """Four threads publishing concurrently lose nothing and the journal order follows seq."""
    sink = RecordingSink()
    with anyio.fail_after(20):
        async with make_bus([sink]) as bus:

            def publisher() -> None:
                for step in range(2000):
                    bus.emit(StepEnd, global_step=step)

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(anyio.to_thread.run_sync, publisher)
    seqs = [e.seq for e in sink.received]
    assert seqs == list(range(8000))


def _record(name: str, result: Any = None) -> Any:
    def hook(args: Any, state: Any, control: Control, **kwargs: Any) -> Any:
        kwargs["seen"].append((name, control.trail, threading.get_ident()))
        return replace(control, trail=(*control.trail, name)) if result is None else result

    return hook


def _async_record(name: str) -> Any:
    async def hook(args: Any, state: Any, control: Control, **kwargs: Any) -> Control:
        await anyio.sleep(0)
        kwargs["seen"].append((name, control.trail, threading.get_ident()))
        return replace(control, trail=(*control.trail, name))

    return hook


def _returns_none(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
    kwargs["seen"].append(("none", control.trail, threading.get_ident()))


def _run_barrier(bus: Bus, seen: list[Any]) -> Control:
    hooks = [_record("a"), _async_record("b"), _returns_none, _record("c")]
    return bus.barrier(hooks, "args", "state", Control(), seen=seen)


def _check_barrier(result: Control, seen: list[Any], caller: int, loop: int) -> None:
    assert result.trail == ("a", "b", "c")
    assert [(name, trail) for name, trail, _ in seen] == [
        ("a", ()),
        ("b", ("a",)),
        ("none", ("a", "b")),
        ("c", ("a", "b")),
    ]
    assert [thread for _, _, thread in seen] == [caller, loop, caller, caller]


async def test_barrier_from_a_worker_thread_of_the_host_loop(make_bus: MakeBus) -> None:
    """train_async case: sync hooks run in the worker, async ones on the host loop, in order."""
    seen: list[Any] = []
    with anyio.fail_after(10):
        async with make_bus() as bus:
            loop_thread = threading.get_ident()
            result, caller = await anyio.to_thread.run_sync(
                lambda: (_run_barrier(bus, seen), threading.get_ident())
            )
    _check_barrier(result, seen, caller, loop_thread)


def test_barrier_with_the_loop_in_a_blocking_portal(tmp_path: Path) -> None:
    """Plain-script case: the loop runs in a portal thread and train() calls the barrier."""
    seen: list[Any] = []
    bus = Bus(run_id="portal", journal_path=tmp_path / "journal.tbj")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(bus),
    ):
        loop_thread = portal.call(threading.get_ident)
        result = _run_barrier(bus, seen)
        bus.emit(StepEnd, global_step=1)
        bus.fsync()
        assert [e.global_step for e in JournalReader(tmp_path / "journal.tbj").read_from()] == [1]
    _check_barrier(result, seen, threading.get_ident(), loop_thread)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_barrier_and_publish_on_both_backends(tmp_path: Path, backend: str) -> None:
    """The same code works when the bus's loop is asyncio or trio."""
    sink = RecordingSink()

    async def main() -> Control:
        with anyio.fail_after(10):
            async with Bus(run_id="r", journal_path=tmp_path / backend, sinks=[sink]) as bus:

                def train() -> Control:
                    bus.emit(StepEnd, global_step=1)
                    control = _run_barrier(bus, [])
                    bus.fsync()
                    return control

                return await anyio.to_thread.run_sync(train)

    assert anyio.run(main, backend=backend).trail == ("a", "b", "c")
    assert [e.global_step for e in sink.received] == [1]


def test_barrier_without_a_running_loop() -> None:
    """A bus that was never started still runs sync and async hooks in order."""
    seen: list[Any] = []
    result = _run_barrier(Bus(run_id="idle"), seen)
    assert result.trail == ("a", "b", "c")


async def test_barrier_propagates_hook_exceptions(make_bus: MakeBus) -> None:
    """An exception in a control callback propagates to the caller, as in Hugging Face."""

    def broken(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        raise KeyError("boom")

    with anyio.fail_after(10):
        async with make_bus() as bus:
            with pytest.raises(KeyError):
                await anyio.to_thread.run_sync(lambda: bus.barrier([broken], 0, 0, Control()))


async def test_async_barrier_on_the_loop_thread_is_refused(make_bus: MakeBus) -> None:
    """Calling the blocking barrier with an async hook on the loop's own thread raises clearly."""
    with anyio.fail_after(10):
        async with make_bus() as bus:
            with pytest.raises(RuntimeError, match="abarrier"):
                bus.barrier([_async_record("x")], 0, 0, Control(), seen=[])
            result = await bus.abarrier(
                [_async_record("x"), _record("y")], 0, 0, Control(), seen=[]
            )
    assert result.trail == ("x", "y")


async def test_stream_delivers_live_events_and_ends_on_close(make_bus: MakeBus) -> None:
    """A stream yields the selected event types in order and ends when the bus closes."""
    got: list[int] = []
    with anyio.fail_after(10):
        async with make_bus() as bus, anyio.create_task_group() as tg:
            stream = bus.stream(Log)

            async def consume() -> None:
                async for event in stream:
                    got.append(event.global_step)

            tg.start_soon(consume)
            for step in range(5):
                bus.emit(StepEnd, global_step=step)
                bus.emit(Log, global_step=step, logs={})
            await bus.drain()
            stream.close()
    assert got == [0, 1, 2, 3, 4]


async def test_stream_overflow_drops_oldest_and_counts(make_bus: MakeBus) -> None:
    """A subscriber that falls behind keeps the newest max_buffer events and counts the rest."""
    with anyio.fail_after(10):
        async with make_bus() as bus, bus.stream(max_buffer=10) as stream:
            for step in range(25):
                bus.emit(StepEnd, global_step=step)
            await bus.drain()
            stream.close()
            got = [event.global_step async for event in stream]
    assert got == list(range(15, 25))
    assert stream.dropped == 15


def test_bad_configuration_names_the_field() -> None:
    """Invalid constructor arguments raise ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="queue_size"):
        Bus(run_id="r", queue_size=0)
    with pytest.raises(ConfigurationError, match="distinct sink names"):
        Bus(run_id="r", sinks=[RecordingSink("x"), RecordingSink("x")])
    with pytest.raises(ConfigurationError, match="run_id"):
        Bus(run_id="")


def test_remote_sinks_run_on_rank_zero_only() -> None:
    """Sinks marked world_rank_zero_only are left out on other ranks."""
    local = RecordingSink("local", world_rank_zero_only=False)
    remote = RecordingSink("remote")
    assert Bus(run_id="r", rank=1, sinks=[local, remote]).sinks == [local]
    assert Bus(run_id="r", rank=0, sinks=[local, remote]).sinks == [local, remote]


async def test_events_published_before_start_are_kept(make_bus: MakeBus, tmp_path: Path) -> None:
    """Events emitted before the loop starts (Trainer.__init__) are journaled once it does."""
    bus = make_bus()
    early = bus.emit(StepEnd, global_step=0)
    with anyio.fail_after(10):
        async with bus:
            late = bus.emit(StepEnd, global_step=1)
    assert list(JournalReader(tmp_path / "journal.tbj").read_from()) == [early, late]


async def test_flow_control_never_hangs_a_publisher_when_the_loop_stalls(make_bus: MakeBus) -> None:
    """With the loop stalled, publishes past the high-water mark pause briefly, then go on."""
    with anyio.fail_after(30), capture_logs() as logs:
        async with make_bus() as bus:
            flood = threading.Thread(target=lambda: [bus.emit(StepEnd) for _ in range(32_868)])
            flood.start()
            flood.join()  # blocks the loop's own thread: nothing drains meanwhile
            await bus.drain()
    assert 0 < bus.flow_control_pauses <= 100
    assert [e["event"] for e in logs].count("bus_flow_control") == 1


def test_flush_and_fsync_from_the_training_thread(tmp_path: Path) -> None:
    """flush() puts what was published in the journal; fsync() does too, durably."""
    bus = Bus(run_id="r", journal_path=tmp_path / "journal.tbj")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(bus),
    ):
        bus.emit(StepEnd, global_step=1)
        bus.flush()
        assert len(list(JournalReader(tmp_path / "journal.tbj").read_from())) == 1
        bus.emit(StepEnd, global_step=2)
        bus.fsync()
        assert len(list(JournalReader(tmp_path / "journal.tbj").read_from())) == 2


def test_events_outside_the_union_are_refused() -> None:
    """Publishing a type the journal could not decode raises ConfigurationError at the source."""

    class Custom(EventBase, frozen=True, kw_only=True, tag="custom"):
        pass

    bus = Bus(run_id="r")
    with pytest.raises(ConfigurationError, match="Custom is not one of the event types"):
        bus.emit(Custom)
    with pytest.raises(ConfigurationError, match="Custom"):
        bus.publish(Custom(run_id="r", seq=0, time=0.0))


async def test_async_hooks_see_every_event_published_before_their_barrier(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """An async hook runs after the bus journaled what the training thread published before it."""
    seen: list[int] = []

    async def read_journal(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        seen.extend(e.global_step for e in JournalReader(tmp_path / "journal.tbj").read_from())

    with anyio.fail_after(10):
        async with make_bus(wake_interval=60.0) as bus:  # no coalesced wake-up during the test

            def train() -> None:
                bus.emit(StepEnd, global_step=1)
                bus.emit(StepEnd, global_step=2)
                bus.barrier([read_journal], None, None, Control())

            await anyio.to_thread.run_sync(train)
    assert seen == [1, 2]


class _EmitsOnClose(RecordingSink):
    """A sink whose close() publishes one more event, as a late publisher racing close would."""

    def __init__(self, bus_box: list[Bus]) -> None:
        super().__init__("late")
        self._bus_box = bus_box

    async def close(self) -> None:
        self._bus_box[0].emit(StepEnd, global_step=99)
        await super().close()


async def test_events_published_while_the_bus_closes_reach_the_journal(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """An event published after the final drain is still journaled (for sync) and reported."""
    box: list[Bus] = []
    sink = _EmitsOnClose(box)
    bus = make_bus([sink])
    box.append(bus)
    with anyio.fail_after(10), capture_logs() as logs:
        async with bus:
            bus.emit(StepEnd, global_step=1)
    steps = [e.global_step for e in JournalReader(tmp_path / "journal.tbj").read_from()]
    assert steps == [1, 99]
    late = [entry for entry in logs if entry["event"] == "bus_events_after_close"]
    assert len(late) == 1 and late[0]["count"] == 1


def _disk_full(events: Any) -> None:
    raise OSError(28, "No space left on device")


def test_a_journal_that_cannot_be_written_stops_publishing(tmp_path: Path) -> None:
    """After a journal write fails, publishing raises instead of piling events up in memory."""
    bus = Bus(run_id="r", journal_path=tmp_path / "journal.tbj")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(bus),
    ):
        assert bus._journal is not None
        bus._journal.append = _disk_full  # type: ignore[method-assign]  # fault injection
        bus.emit(StepEnd, global_step=1)
        with pytest.raises(OSError, match="No space left"):
            bus.flush()
        with pytest.raises(JournalError, match="No space left on device"):
            bus.emit(StepEnd, global_step=2)
        with pytest.raises(JournalError, match="could not write its journal"):
            bus.publish(StepEnd(run_id="r", seq=0, time=0.0, global_step=3))
    assert len(bus._outbox) == 0


async def test_no_append_follows_a_failed_journal_write(make_bus: MakeBus, tmp_path: Path) -> None:
    """Events queued before a write failed are not appended after it (a torn record must stay
    the journal's tail, never be buried under intact ones); the close says so."""
    with anyio.fail_after(10):
        async with make_bus(wake_interval=60.0) as bus:
            assert bus._journal is not None
            real_append = bus._journal.append
            bus._journal.append = _disk_full  # type: ignore[method-assign]  # fault injection
            for step in range(600):  # more than one burst: the first fails, the rest wait
                bus.emit(StepEnd, global_step=step)
            with pytest.raises(OSError, match="No space left"):
                await bus.drain()
            bus._journal.append = real_append  # type: ignore[method-assign]  # the disk recovers
            with pytest.raises(JournalError, match="could not write its journal"):
                await bus.drain()
    assert list(JournalReader(tmp_path / "journal.tbj").read_from()) == []


async def test_closing_after_a_failed_journal_write_raises_instead_of_hanging(
    make_bus: MakeBus,
) -> None:
    """If the final drain cannot write the journal, the close still ends its tasks and raises."""
    sink = RecordingSink()
    with anyio.fail_after(10), pytest.raises(OSError, match="No space left"):
        async with make_bus([sink], wake_interval=60.0) as bus:
            assert bus._journal is not None
            bus._journal.append = _disk_full  # type: ignore[method-assign]  # fault injection
            bus.emit(StepEnd, global_step=1)
    assert bus.report is not None and sink.closed


async def test_a_failed_start_leaves_nothing_open(make_bus: MakeBus, tmp_path: Path) -> None:
    """A bad cursor file fails the start with its path named; the journal is closed again, and
    the same bus starts once the cursor is fixed."""
    (tmp_path / "cursors").mkdir()
    (tmp_path / "cursors" / "recording.cursor").write_text("not a number\n")
    sink = RecordingSink()
    bus = make_bus([sink])
    with anyio.fail_after(10):
        with pytest.raises(JournalError, match=r"recording\.cursor"):
            async with bus:
                pass
        assert bus._journal is None
        (tmp_path / "cursors" / "recording.cursor").write_text("-1\n")
        async with bus:
            bus.emit(StepEnd, global_step=1)
    assert [e.global_step for e in sink.received] == [1]


class _WriteStarted(RecordingSink):
    """A ``RecordingSink`` that tells the test when its first ``write`` began (blocked or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = anyio.Event()

    async def write(self, batch: Sequence[Event]) -> None:
        self.started.set()
        await super().write(batch)


async def test_a_sink_that_ran_dry_gets_pending_events_before_the_next_poll(
    make_bus: MakeBus,
) -> None:
    """What was published while a sink was busy reaches it when it is done, not a poll later."""
    sink = _WriteStarted()
    with anyio.fail_after(10):
        async with make_bus([sink], wake_interval=60.0) as bus:  # the next poll is a minute away
            sink.block()
            bus.emit(StepEnd, global_step=1)
            await bus.drain()
            await sink.started.wait()  # step 1 is being written, and blocked there
            bus.emit(StepEnd, global_step=2)  # waits in the bus for its next poll
            sink.release()
            await sink.wait_for(2)
    assert [e.global_step for e in sink.received] == [1, 2]


async def test_events_published_on_the_loop_do_not_wait_for_the_poll(make_bus: MakeBus) -> None:
    """A publisher on the bus's own loop (an async service) has its events drained at the
    loop's next turn; only other threads' events wait for the polling timer."""
    sink = RecordingSink()
    with anyio.fail_after(10):
        async with make_bus([sink], wake_interval=60.0) as bus:  # the timer would take a minute
            bus.emit(StepEnd, global_step=1)
            await sink.wait_for(1)
            bus.emit(StepEnd, global_step=2)  # the loop is polling now: this one nudges it
            await sink.wait_for(2)
    assert [e.global_step for e in sink.received] == [1, 2]

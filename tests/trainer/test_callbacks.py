"""The callback contract: hooks, registration semantics, pre-resets, control threading, dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import pytest
from structlog.testing import capture_logs

from trainbus.bus._bus import Bus
from trainbus.bus._events import HF_EVENT_TYPES, hook_name
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import EVENT_NAMES, Hook, TrainerCallback
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._progress import PrinterCallback
from trainbus.trainer._state import TrainerControl, TrainerState

C = TypeVar("C")

ALL_FLAGS = dict.fromkeys(
    ["should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log"],
    True,
)

# event -> flags the handler clears before any callback runs (spec §2.1 / §4)
PRE_RESETS: dict[str, set[str]] = {
    "on_train_begin": {"should_training_stop"},
    "on_epoch_begin": {"should_epoch_stop"},
    "on_step_begin": {"should_log", "should_evaluate", "should_save"},
    "on_log": {"should_log"},
    "on_evaluate": {"should_evaluate"},
    "on_save": {"should_save"},
}


class Recorder(TrainerCallback):
    """Overrides every hook and records (event, flags seen, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, bool], dict[str, Any]]] = []

    def _record(self, event: str, control: TrainerControl, kwargs: dict[str, Any]) -> None:
        self.calls.append((event, dict(control.state()["args"]), kwargs))


for _event in EVENT_NAMES:

    def _hook(
        self: Recorder,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        _event: str = _event,
        **kwargs: Any,
    ) -> None:
        self._record(_event, control, kwargs)

    setattr(Recorder, _event, _hook)


def fire(handler: CallbackHandler, event: str, control: TrainerControl) -> TrainerControl:
    """Call the handler's wrapper for ``event`` with the extra argument it needs."""
    args, state = TrainingArguments(), TrainerState()
    if event == "on_log":
        return handler.on_log(args, state, control, {"loss": 1.0})
    if event in ("on_evaluate", "on_predict"):
        result: TrainerControl = getattr(handler, event)(args, state, control, {"eval_loss": 1.0})
        return result
    result = getattr(handler, event)(args, state, control)
    return result


def _hooks_of(klass: type) -> set[str]:
    return {name for name in dir(klass) if name.startswith("on_")}


def test_trainer_callback_has_a_hook_for_every_hf_event() -> None:
    """TrainerCallback and CallbackHandler define exactly one ``on_<tag>`` per HF event of the
    bus's union, and the names the handler dispatches are those."""
    names = {"on_" + str(event_type.__struct_config__.tag) for event_type in HF_EVENT_TYPES}
    assert len(names) == len(HF_EVENT_TYPES) == 16
    assert _hooks_of(TrainerCallback) == names
    assert _hooks_of(CallbackHandler) == names
    assert set(EVENT_NAMES) == {hook_name(event_type) for event_type in HF_EVENT_TYPES} == names


def test_hook_names_equal_transformers() -> None:
    """Our TrainerCallback has exactly the on_* hooks of transformers' TrainerCallback."""
    transformers = pytest.importorskip("transformers")
    theirs = {name for name in dir(transformers.TrainerCallback) if name.startswith("on_")}
    ours = {name for name in dir(TrainerCallback) if name.startswith("on_")}
    assert ours == theirs == set(EVENT_NAMES)


def test_base_hooks_return_none() -> None:
    """Every base hook is a no-op returning None, as in Hugging Face."""
    cb = TrainerCallback()
    for name in EVENT_NAMES:
        assert getattr(cb, name)(TrainingArguments(), TrainerState(), TrainerControl()) is None


@pytest.mark.parametrize("event", EVENT_NAMES)
def test_pre_resets_happen_before_callbacks(event: str) -> None:
    """The handler clears exactly the spec's flags for each event before any callback sees them."""
    recorder = Recorder()
    handler = CallbackHandler([DefaultFlowCallback, recorder])
    control = TrainerControl(**ALL_FLAGS)
    fire(handler, event, control)
    (seen_event, flags, _), *_ = recorder.calls
    assert seen_event == event
    cleared = {flag for flag, value in flags.items() if not value}
    assert cleared == PRE_RESETS.get(event, set())


def test_common_and_event_kwargs_reach_callbacks() -> None:
    """Callbacks get model/processing_class/optimizer/lr_scheduler/dataloaders and logs/metrics."""
    recorder = Recorder()
    handler = CallbackHandler([DefaultFlowCallback, recorder], "M", "P", "O", "S")
    handler.train_dataloader, handler.eval_dataloader = "T", "E"
    fire(handler, "on_log", TrainerControl())
    fire(handler, "on_evaluate", TrainerControl())
    fire(handler, "on_step_end", TrainerControl())
    common = {
        "model": "M",
        "processing_class": "P",
        "optimizer": "O",
        "lr_scheduler": "S",
        "train_dataloader": "T",
        "eval_dataloader": "E",
    }
    assert [call[2] for call in recorder.calls] == [
        {**common, "logs": {"loss": 1.0}},
        {**common, "metrics": {"eval_loss": 1.0}},
        common,
    ]


def test_returned_control_replaces_the_one_passed_on() -> None:
    """A non-None return becomes the control the next callback sees and the handler returns."""
    replacement = TrainerControl(should_save=True)
    seen: list[TrainerControl] = []

    class Replace(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            return replacement

    class Mutate(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append(control)
            control.should_log = True

    handler = CallbackHandler([DefaultFlowCallback, Replace, Mutate])
    original = TrainerControl()
    state = TrainerState(global_step=3, max_steps=100)
    result = handler.on_step_end(TrainingArguments(), state, original)
    assert result is replacement and seen == [replacement]
    assert result.should_log and result.should_save
    assert not original.should_log


def test_add_instantiates_classes_and_warns_on_duplicates() -> None:
    """Adding a class instantiates it; a second object of the same class warns but is appended."""
    handler = CallbackHandler([DefaultFlowCallback])
    with capture_logs() as logs:
        handler.add_callback(PrinterCallback)
        handler.add_callback(PrinterCallback())
    assert [type(cb) for cb in handler.callbacks] == [
        DefaultFlowCallback,
        PrinterCallback,
        PrinterCallback,
    ]
    warnings = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1 and "there is already one" in warnings[0]
    assert handler.callback_list == "DefaultFlowCallback\nPrinterCallback\nPrinterCallback"


def test_missing_default_flow_callback_warns() -> None:
    """A handler built without a DefaultFlowCallback warns that the trainer will misbehave."""
    with capture_logs() as logs:
        CallbackHandler([PrinterCallback])
    assert any("DefaultFlowCallback" in entry["event"] for entry in logs)
    with capture_logs() as logs:
        CallbackHandler([DefaultFlowCallback])
    assert logs == []


def test_pop_matches_subclasses_for_classes_and_equality_for_instances() -> None:
    """pop_callback takes the first isinstance match for a class, the first == for an instance."""

    class Sub(PrinterCallback):
        pass

    sub, printer = Sub(), PrinterCallback()
    handler = CallbackHandler([DefaultFlowCallback, sub, printer])
    assert handler.pop_callback(PrinterCallback) is sub
    assert handler.pop_callback(printer) is printer
    assert handler.pop_callback(PrinterCallback) is None
    assert handler.pop_callback(PrinterCallback()) is None


def test_remove_is_silent_for_classes_and_strict_for_instances() -> None:
    """remove_callback ignores an unknown class but raises ValueError for an unknown instance."""
    printer = PrinterCallback()
    handler = CallbackHandler([DefaultFlowCallback, printer])
    handler.remove_callback(Recorder)
    handler.remove_callback(printer)
    assert [type(cb) for cb in handler.callbacks] == [DefaultFlowCallback]
    with pytest.raises(ValueError):
        handler.remove_callback(printer)
    handler.remove_callback(DefaultFlowCallback)
    assert handler.callbacks == []


def test_only_overriding_callbacks_are_listed_and_lists_follow_changes() -> None:
    """Hooks inherited from the base class are never dispatched; lists update on add/pop."""
    flow, printer = DefaultFlowCallback(), PrinterCallback()
    handler = CallbackHandler([flow, printer])
    assert handler.listeners("on_step_begin") == ()
    assert handler.listeners("on_step_end") == (flow.on_step_end,)
    assert handler.listeners("on_log") == (printer.on_log,)
    handler.pop_callback(printer)
    assert handler.listeners("on_log") == ()
    recorder = Recorder()
    handler.add_callback(recorder)
    assert handler.listeners("on_step_begin") == (recorder.on_step_begin,)


def test_editing_the_list_in_place_refreshes_dispatch() -> None:
    """Inserting, replacing or deleting in handler.callbacks (as HF users do) takes effect."""
    recorder, printer = Recorder(), PrinterCallback()
    handler = CallbackHandler([DefaultFlowCallback])
    handler.callbacks.insert(0, recorder)
    assert handler.listeners("on_substep_end") == (recorder.on_substep_end,)
    handler.callbacks[0] = printer
    assert handler.listeners("on_substep_end") == ()
    assert handler.listeners("on_log") == (printer.on_log,)
    del handler.callbacks[0]
    assert handler.listeners("on_log") == ()
    handler.callbacks += [recorder]
    assert handler.listeners("on_log") == (recorder.on_log,)
    handler.callbacks = [printer]
    assert handler.listeners("on_log") == (printer.on_log,)
    handler.callbacks.clear()
    assert all(handler.listeners(event) == () for event in EVENT_NAMES)


def test_duck_typed_callbacks_and_instance_hooks_are_dispatched() -> None:
    """Any object with on_* methods works, and a hook set on an instance is seen."""
    calls: list[str] = []

    class Duck:
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            calls.append("duck")

    printer = PrinterCallback()

    def patched(args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        calls.append("instance")

    printer.on_save = patched  # type: ignore[method-assign]  # what the test is about
    handler = CallbackHandler([DefaultFlowCallback, Duck(), printer])
    handler.on_save(TrainingArguments(), TrainerState(), TrainerControl())
    assert calls == ["duck", "instance"]
    assert handler.listeners("on_log") == (printer.on_log,)


def test_transformers_base_hooks_are_skipped() -> None:
    """A transformers TrainerCallback subclass is dispatched only for the hooks it overrides."""
    transformers = pytest.importorskip("transformers")
    calls: list[str] = []

    their_base: Any = transformers.TrainerCallback

    class TheirCallback(their_base):  # type: ignore[misc]  # transformers ships no stubs here
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            calls.append(f"step {state.global_step}")
            control.should_save = True

    theirs = TheirCallback()
    handler = CallbackHandler([DefaultFlowCallback, theirs])
    assert handler.listeners("on_step_end")[1] == theirs.on_step_end
    others = [hook for e in EVENT_NAMES if e != "on_step_end" for hook in handler.listeners(e)]
    assert all(getattr(hook, "__self__", None) is not theirs for hook in others)
    control = handler.on_step_end(
        TrainingArguments(), TrainerState(global_step=3), TrainerControl()
    )
    assert calls == ["step 3"] and control.should_save


class AsyncSaver(TrainerCallback):
    async def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        return TrainerControl(should_save=True, should_log=control.should_log)


def test_async_hooks_without_a_bus_run_in_place() -> None:
    """Without a bus an event with coroutine hooks runs to completion in place, control threaded."""
    handler = CallbackHandler([DefaultFlowCallback, AsyncSaver()])
    state = TrainerState(global_step=1, max_steps=10)
    control = handler.on_step_end(
        TrainingArguments(logging_first_step=True), state, TrainerControl()
    )
    assert control.should_save and control.should_log


async def test_async_hooks_inside_a_running_loop_need_a_bus() -> None:
    """Dispatching coroutine hooks from a running event loop without a bus is a clear error."""
    handler = CallbackHandler([DefaultFlowCallback, AsyncSaver()])
    with pytest.raises(RuntimeError, match="attach a bus"):
        handler.on_step_end(TrainingArguments(), TrainerState(max_steps=10), TrainerControl())


class RecordingBus(Bus):
    """A real bus that also records what each ``barrier`` call was given."""

    def __init__(self) -> None:
        super().__init__(run_id="recording")
        self.seen: list[tuple[tuple[Hook, ...], set[str]]] = []

    def barrier(self, hooks: Sequence[Hook], args: Any, state: Any, control: C, **kwargs: Any) -> C:
        self.seen.append((tuple(hooks), set(kwargs)))
        return super().barrier(hooks, args, state, control, **kwargs)


def test_events_with_async_hooks_go_through_the_bus_barrier() -> None:
    """With a bus attached, an event with an ``async def`` hook goes to bus.barrier with every
    listener and all kwargs; plain-only events run inline (as the barrier would run them)."""
    flow, saver = DefaultFlowCallback(), AsyncSaver()
    handler = CallbackHandler([flow, saver])
    bus = RecordingBus()
    handler.bus = bus
    args, state = TrainingArguments(), TrainerState(global_step=5, max_steps=5)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(bus),
    ):
        control = handler.on_step_end(args, state, TrainerControl())
    assert control.should_save  # AsyncSaver's control, awaited
    assert len(bus.seen) == 1
    hooks, kwargs = bus.seen[0]
    assert hooks == (flow.on_step_end, saver.on_step_end)
    assert kwargs == {
        "model",
        "processing_class",
        "optimizer",
        "lr_scheduler",
        "train_dataloader",
        "eval_dataloader",
    }
    control = handler.on_epoch_end(args, state, TrainerControl())  # DefaultFlow only: inline
    handler.on_step_begin(args, state, TrainerControl())  # nobody listens
    assert len(bus.seen) == 1


class ReturnsCoroutine(TrainerCallback):
    """A plain hook that returns a coroutine (a wrapper around an async implementation)."""

    def __init__(self) -> None:
        self.awaited = 0

    async def _stop(self, control: TrainerControl) -> TrainerControl:
        await anyio.sleep(0)
        self.awaited += 1
        control.should_training_stop = True
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self._stop(control)


@pytest.mark.parametrize("with_bus", [False, True])
def test_a_plain_hook_returning_a_coroutine_is_awaited(tmp_path: Path, with_bus: bool) -> None:
    """The coroutine is awaited (on the bus's loop when there is one) and its control kept."""
    callback = ReturnsCoroutine()
    handler = CallbackHandler([DefaultFlowCallback, callback])
    args, state = TrainingArguments(output_dir=str(tmp_path)), TrainerState(max_steps=10)
    if not with_bus:
        control = handler.on_epoch_end(args, state, TrainerControl())
    else:
        bus = Bus(run_id="coroutine")
        with (
            anyio.from_thread.start_blocking_portal() as portal,
            portal.wrap_async_context_manager(bus),
        ):
            handler.bus = bus
            control = handler.on_epoch_end(args, state, TrainerControl())
    assert control.should_training_stop
    assert callback.awaited == 1


def test_callback_exceptions_propagate() -> None:
    """An exception in a callback aborts the dispatch, as in Hugging Face (no swallowing)."""

    class Boom(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            raise KeyError("boom")

    handler = CallbackHandler([DefaultFlowCallback, Boom])
    with pytest.raises(KeyError):
        handler.on_epoch_end(TrainingArguments(), TrainerState(), TrainerControl())

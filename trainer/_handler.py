"""`CallbackHandler`: Hugging Face's dispatch contract, dispatched cheaply.

The handler keeps Hugging Face's semantics (registration order, the per-event flag resets,
``control`` threaded through the callbacks, the common keyword arguments) and adds two things:

* For every event it precomputes the callbacks whose class really overrides that hook
  (``trainbus.trainer._callbacks.overridden_hook``), so inherited no-op hooks cost nothing per step.
* ``async def`` hooks. With a ``bus`` attached, an event with such a hook goes through
  ``bus.barrier(hooks, args, state, control, **kwargs)``, which runs plain hooks inline and awaits
  coroutine hooks on the bus's event loop; an event with plain hooks only runs them here with the
  bus's own dispatch loop (``trainbus.bus._dispatch``), without the extra hop. Without a bus, an
  event that has coroutine hooks is run to completion in place with `anyio.run`; from inside a
  running event loop that is impossible, so the handler raises `RuntimeError` telling the caller
  to attach a bus.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol, SupportsIndex

import anyio
import structlog

from trainbus.bus._dispatch import adispatch, dispatch
from trainbus.trainer._callbacks import EVENT_NAMES, Hook, overridden_hook

if TYPE_CHECKING:
    from typing_extensions import Self

    from trainbus.trainer._arguments import TrainingArguments
    from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["Barrier", "CallbackHandler", "callback_failure"]

_log = structlog.get_logger(__name__)
_COMMON_KWARGS: Final = (
    "model",
    "processing_class",
    "optimizer",
    "lr_scheduler",
    "train_dataloader",
    "eval_dataloader",
)


class Barrier(Protocol):
    """What the handler needs from the bus: run hooks in order and return the final control, and
    await one coroutine (a plain hook's return) where an ``async def`` hook would be awaited."""

    def barrier(
        self,
        hooks: tuple[Hook, ...],
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl: ...

    def settle(self, coro: Coroutine[Any, Any, Any]) -> Any: ...


class _CallbackList(list[Any]):
    """The handler's list: editing it in place (HF users do) refreshes the dispatch tables."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__()
        self._on_change = on_change

    def append(self, item: Any) -> None:
        super().append(item)
        self._on_change()

    def insert(self, index: SupportsIndex, item: Any) -> None:
        super().insert(index, item)
        self._on_change()

    def extend(self, items: Iterable[Any]) -> None:
        super().extend(items)
        self._on_change()

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._on_change()

    def pop(self, index: SupportsIndex = -1) -> Any:
        item = super().pop(index)
        self._on_change()
        return item

    def clear(self) -> None:
        super().clear()
        self._on_change()

    def reverse(self) -> None:
        super().reverse()
        self._on_change()

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        super().sort(key=key, reverse=reverse)
        self._on_change()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._on_change()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._on_change()

    def __iadd__(self, items: Iterable[Any]) -> Self:  # type: ignore[misc]  # as list does
        super().__iadd__(items)
        self._on_change()
        return self


def _has_flow(callbacks: Iterable[object]) -> bool:
    return any(
        klass.__name__ == "DefaultFlowCallback" for cb in callbacks for klass in type(cb).__mro__
    )


class CallbackHandler:
    """Holds the ordered callbacks and dispatches each event to those that listen to it."""

    def __init__(
        self,
        callbacks: Iterable[object],
        model: Any = None,
        processing_class: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
    ) -> None:
        self._common: dict[str, Any] | None = None
        self._callbacks = _CallbackList(self._rebuild)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None
        self.bus: Barrier | None = None
        self.before_dispatch: Callable[[], None] | None = None
        """Called before any hook runs: the trainer publishes the events it stamped meanwhile."""
        self._hooks: dict[str, tuple[Hook, ...]] = {}
        self._async_events: frozenset[str] = frozenset()
        self._rebuild()
        for callback in callbacks:
            self.add_callback(callback)
        if not _has_flow(self.callbacks):
            _log.warning(
                "The Trainer will not work properly if you don't have a `DefaultFlowCallback` in "
                "its callbacks. You should add one before training with "
                "`trainer.add_callback(DefaultFlowCallback)`. The current list of callbacks is\n"
                + self.callback_list
            )

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _COMMON_KWARGS:  # the cached keyword arguments of every hook are stale now
            object.__setattr__(self, "_common", None)

    def _common_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every hook gets, built once per change rather than per event."""
        common = self._common
        if common is None:
            common = self._common = {name: getattr(self, name) for name in _COMMON_KWARGS}
        return common

    # --- registration (Hugging Face's exact semantics) --------------------------------------

    @property
    def callbacks(self) -> list[Any]:
        """The callbacks in dispatch order; edits in place or by assignment take effect at once."""
        return self._callbacks

    @callbacks.setter
    def callbacks(self, callbacks: Iterable[Any]) -> None:
        fresh = _CallbackList(self._rebuild)
        list.extend(fresh, callbacks)
        self._callbacks = fresh
        self._rebuild()

    def add_callback(self, callback: object) -> None:
        """Append a callback (a class is instantiated); a second one of a class only warns."""
        cb = callback() if isinstance(callback, type) else callback
        cb_class = callback if isinstance(callback, type) else type(callback)
        if cb_class in [type(c) for c in self.callbacks]:
            _log.warning(
                f"You are adding a {cb_class} to the callbacks of this Trainer, but there is "
                "already one. The current list of callbacks is\n:" + self.callback_list
            )
        self.callbacks.append(cb)

    def pop_callback(self, callback: object) -> Any:
        """Remove and return the first match (a class matches subclasses), or None."""
        for cb in self.callbacks:
            if (isinstance(callback, type) and isinstance(cb, callback)) or cb == callback:
                self.callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback: object) -> None:
        """Remove the first match; an instance that is not registered raises ValueError."""
        if isinstance(callback, type):
            for cb in self.callbacks:
                if isinstance(cb, callback):
                    self.callbacks.remove(cb)
                    break
        else:
            self.callbacks.remove(callback)

    @property
    def callback_list(self) -> str:
        return "\n".join(type(cb).__name__ for cb in self.callbacks)

    def listeners(self, event: str) -> tuple[Hook, ...]:
        """The hooks ``event`` will call, in order (empty when nobody overrides it)."""
        return self._hooks.get(event, ())

    def _rebuild(self) -> None:
        """Work out once which callbacks listen to which event, so dispatch loops stay tight."""
        hooks: dict[str, tuple[Hook, ...]] = {}
        async_events: set[str] = set()
        for event in EVENT_NAMES:
            found = [overridden_hook(cb, event) for cb in self.callbacks]
            listening = tuple(hook for hook in found if hook is not None)
            hooks[event] = listening
            if any(inspect.iscoroutinefunction(hook) for hook in listening):
                async_events.add(event)
        self._hooks = hooks
        self._async_events = frozenset(async_events)

    # --- dispatch ---------------------------------------------------------------------------

    def call_event(
        self,
        event: str,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        """Run ``event``'s listeners in order, threading ``control``; return the final one."""
        hooks = self._hooks[event]
        if not hooks:
            return control
        before = self.before_dispatch
        if before is not None:
            before()
        common = self._common
        if common is None:
            common = self._common_kwargs()
        kwargs = {**common, **kwargs} if kwargs else common
        try:  # free until something raises (zero-cost exceptions since Python 3.11)
            if event in self._async_events:
                if self.bus is not None:
                    return self.bus.barrier(hooks, args, state, control, **kwargs)
                return _run_with_coroutines(event, hooks, args, state, control, kwargs)
            # Plain hooks run here, as the bus's barrier would run them, without the extra call.
            return dispatch(hooks, args, state, control, kwargs, self._settle)
        except Exception as exc:
            _name_the_callback(exc, hooks)
            raise

    def _settle(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Await a coroutine a plain hook returned, where an ``async def`` hook would be awaited."""
        if self.bus is not None:
            return self.bus.settle(coroutine)
        try:
            _check_no_running_loop("A hook returned a coroutine and was dispatched")
        except RuntimeError:  # never awaited, so close it
            coroutine.close()
            raise
        return anyio.run(_await, coroutine)

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_init_end", args, state, control, **kwargs)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        control.should_training_stop = False
        return self.call_event("on_train_begin", args, state, control, **kwargs)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_train_end", args, state, control, **kwargs)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        control.should_epoch_stop = False
        return self.call_event("on_epoch_begin", args, state, control, **kwargs)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_epoch_end", args, state, control, **kwargs)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        control.should_log = False
        control.should_evaluate = False
        control.should_save = False
        if not self._hooks["on_step_begin"]:  # every step, usually unheard: skip call_event
            return control
        return self.call_event("on_step_begin", args, state, control, **kwargs)

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if not self._hooks["on_substep_end"]:  # every step, usually unheard: skip call_event
            return control
        return self.call_event("on_substep_end", args, state, control, **kwargs)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if not self._hooks["on_pre_optimizer_step"]:  # every step, usually unheard: skip call_event
            return control
        return self.call_event("on_pre_optimizer_step", args, state, control, **kwargs)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if not self._hooks["on_optimizer_step"]:  # every step, usually unheard: skip call_event
            return control
        return self.call_event("on_optimizer_step", args, state, control, **kwargs)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_step_end", args, state, control, **kwargs)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any],
        **kwargs: Any,
    ) -> TrainerControl:
        control.should_evaluate = False
        return self.call_event("on_evaluate", args, state, control, metrics=metrics, **kwargs)

    def on_predict(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any],
        **kwargs: Any,
    ) -> TrainerControl:
        return self.call_event("on_predict", args, state, control, metrics=metrics, **kwargs)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        control.should_save = False
        return self.call_event("on_save", args, state, control, **kwargs)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any],
        **kwargs: Any,
    ) -> TrainerControl:
        control.should_log = False
        return self.call_event("on_log", args, state, control, logs=logs, **kwargs)

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_prediction_step", args, state, control, **kwargs)

    def on_push_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_push_begin", args, state, control, **kwargs)


def _run_with_coroutines(
    event: str,
    hooks: tuple[Hook, ...],
    args: TrainingArguments,
    state: TrainerState,
    control: TrainerControl,
    kwargs: dict[str, Any],
) -> TrainerControl:
    """Dispatch an event with ``async def`` hooks when no bus is attached: one `anyio.run`."""
    _check_no_running_loop(f"{event} has async hooks and is dispatched")
    return anyio.run(adispatch, hooks, args, state, control, kwargs, _await)


def _check_no_running_loop(what: str) -> None:
    """Running an event loop in place is safe only where none runs on this thread already."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what} from inside a running event loop without a bus; attach a bus (handler.bus) so "
        "coroutines are awaited on its loop."
    )


async def _await(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return await coroutine


# --- naming the callback that raised ----------------------------------------------------------

_NOTE_PREFIX: Final = "raised in the callback hook "


def callback_failure(exc: BaseException) -> str | None:
    """``"EarlyStoppingCallback.on_evaluate raised ValueError: ..."`` for an exception a callback
    hook raised (see `_name_the_callback`), else ``None``; the CLI prints it as its one line."""
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_NOTE_PREFIX):
            where = note.removeprefix(_NOTE_PREFIX)
            return f"{where} raised {type(exc).__name__}: {exc}"
    return None


def _name_the_callback(exc: Exception, hooks: tuple[Hook, ...]) -> None:
    """Name the hook that raised ``exc``: a note on the exception, one error line, and the
    traceback at debug level.

    The exception itself propagates unchanged (a note, not a wrapper), so ``except ValueError``
    around ``train()`` still catches a callback's ``ValueError``. The hook is the outermost frame
    of the traceback that runs one of ``hooks``' code; an exception from the dispatch itself, or
    one already named by an inner dispatch (a hook that calls ``evaluate()``), is left alone.
    """
    if callback_failure(exc) is not None:
        return
    codes = {_code_of(hook): hook for hook in hooks}
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code not in codes:
        tb = tb.tb_next
    if tb is None:
        return
    where = _hook_name(codes[tb.tb_frame.f_code])
    exc.add_note(_NOTE_PREFIX + where)
    _log.error("callback_failed", hook=where, error=f"{type(exc).__name__}: {exc}")
    _log.debug("callback_failed_traceback", hook=where, exc_info=exc)


def _code_of(hook: Hook) -> object:
    function = getattr(hook, "__func__", hook)
    return getattr(function, "__code__", None) or getattr(type(hook).__call__, "__code__", None)


def _hook_name(hook: Hook) -> str:
    """``Class.on_event`` for a bound method, the function's qualified name otherwise."""
    owner = getattr(hook, "__self__", None)
    name = getattr(hook, "__name__", type(hook).__name__)
    if owner is not None:
        return f"{type(owner).__name__}.{name}"
    return str(getattr(hook, "__qualname__", name))

"""The one hook-dispatch loop: order, control threading, coroutines settled by the driver."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import anyio
import pytest

from trainbus.bus._dispatch import adispatch, dispatch


class Control:
    """A stand-in control object (the bus knows nothing of the trainer's)."""

    def __init__(self, name: str) -> None:
        self.name = name


def _settle(coro: Coroutine[Any, Any, Any]) -> Any:
    async def run() -> Any:
        return await coro

    return anyio.run(run)


def test_hooks_run_in_order_and_a_return_replaces_the_control() -> None:
    """Each hook sees the control the previous one returned; ``None`` keeps it; the last wins."""
    first, second = Control("first"), Control("second")
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def keep(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        seen.append(("keep", control.name, kwargs))

    def replace(args: Any, state: Any, control: Control, **kwargs: Any) -> Control:
        seen.append(("replace", control.name, kwargs))
        return second

    result = dispatch((keep, replace, keep), "args", "state", first, {"model": 1}, _settle)
    assert result is second
    assert seen == [
        ("keep", "first", {"model": 1}),
        ("replace", "first", {"model": 1}),
        ("keep", "second", {"model": 1}),
    ]


def test_a_coroutine_is_settled_and_its_result_counts_as_the_return() -> None:
    """An ``async def`` hook goes to ``settle``; a control it returns replaces, ``None`` keeps."""
    start, replaced = Control("start"), Control("replaced")
    settled: list[str] = []

    async def returns_control(args: Any, state: Any, control: Control, **kwargs: Any) -> Control:
        return replaced

    async def returns_none(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        return None

    def settle(coro: Coroutine[Any, Any, Any]) -> Any:
        settled.append(coro.__name__)
        return _settle(coro)

    assert dispatch((returns_none,), None, None, start, {}, settle) is start
    assert dispatch((returns_none, returns_control), None, None, start, {}, settle) is replaced
    assert settled == ["returns_none", "returns_none", "returns_control"]


def test_an_exception_in_a_hook_propagates_and_stops_the_dispatch() -> None:
    """A hook that raises ends the dispatch with its exception; later hooks do not run."""
    ran: list[str] = []

    def boom(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        raise KeyError("boom")

    def later(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        ran.append("later")

    with pytest.raises(KeyError):
        dispatch((boom, later), None, None, Control("c"), {}, _settle)
    assert ran == []


async def test_adispatch_awaits_coroutines_with_its_asettle() -> None:
    """On an event loop, plain hooks run inline and ``asettle`` awaits the coroutines."""
    start, replaced = Control("start"), Control("replaced")
    awaited: list[str] = []

    def plain(args: Any, state: Any, control: Control, **kwargs: Any) -> None:
        return None

    async def hook(args: Any, state: Any, control: Control, **kwargs: Any) -> Control:
        await anyio.lowlevel.checkpoint()
        return replaced

    async def asettle(coro: Coroutine[Any, Any, Any]) -> Any:
        awaited.append(coro.__name__)
        return await coro

    assert await adispatch((plain, hook, plain), None, None, start, {}, asettle) is replaced
    assert awaited == ["hook"]

"""Blocking work in a worker thread that a cancelled caller can ask to stop.

A thread cannot be cancelled. Left to ``anyio.to_thread.run_sync``, cancelling the awaiting task
only takes effect when the thread returns, which for a training loop may be hours later. Here
cancelling calls ``on_cancel`` (which asks the work to stop, say by raising a flag it polls) and
then still waits for the thread, so nothing the work holds is torn down under it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio

__all__ = ["run_in_worker_thread"]

T = TypeVar("T")


async def run_in_worker_thread(work: Callable[[], T], *, on_cancel: Callable[[], None]) -> T:
    """Run ``work()`` in a worker thread; cancellation calls ``on_cancel`` and waits for it."""
    finished = anyio.Event()

    async def relay_cancel() -> None:
        try:
            await finished.wait()
        except anyio.get_cancelled_exc_class():
            on_cancel()
            raise

    outcome: list[T] = []
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay_cancel)
        with anyio.CancelScope(shield=True):
            try:
                outcome.append(await anyio.to_thread.run_sync(work))
            except BaseException as exc:  # re-raised below, outside the task group
                error = exc
            finally:
                finished.set()
    if error is not None:
        raise error
    return outcome[0]

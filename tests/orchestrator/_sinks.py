"""Sinks the orchestrator tests load by ``module:Class`` in a ``trainbus`` subprocess."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from examples.custom_sink import JsonLines
from trainbus.bus._events import Event

__all__ = ["SlowJsonLines"]


class SlowJsonLines(JsonLines):
    """``JsonLines`` that waits ``TRAINBUS_TEST_SINK_DELAY`` seconds before each batch.

    In the training process the delay makes the sink fall behind the journal; ``trainbus sync``
    runs without the variable and catches up at full speed.
    """

    name = "slow-jsonl"
    max_batch_size = 8
    max_batch_latency = 0.0

    async def write(self, batch: Sequence[Event]) -> None:
        delay = float(os.environ.get("TRAINBUS_TEST_SINK_DELAY", "0"))
        if delay:
            await anyio.sleep(delay)
        await super().write(batch)

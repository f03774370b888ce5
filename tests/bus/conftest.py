"""Factories shared by the bus tests (factories, not open resources: see the testing guide)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from bus import Bus, RetryPolicy, Sink

FAST_RETRIES = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_crashes=3)
"""Backoff short enough that retry tests take milliseconds."""

MakeBus = Callable[..., Bus]


@pytest.fixture
def make_bus(tmp_path: Path) -> MakeBus:
    """Build a bus journaling under ``tmp_path`` with fast retries."""

    def make(sinks: Sequence[Sink] = (), **kwargs: object) -> Bus:
        options: dict[str, object] = {
            "run_id": "test-run",
            "journal_path": tmp_path / "journal.tbj",
            "cursor_dir": tmp_path / "cursors",
            "retry_policy": FAST_RETRIES,
        }
        options.update(kwargs)
        return Bus(sinks=sinks, **options)  # type: ignore[arg-type]

    return make

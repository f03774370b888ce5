"""Factories shared by the bus tests (factories, not open resources: see the testing guide)."""

from __future__ import annotations

import faulthandler
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from trainbus.bus import Bus, RetryPolicy, Sink

FAST_RETRIES = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_crashes=3)
"""Backoff short enough that retry tests take milliseconds."""

MakeBus = Callable[..., Bus]

TIME_LIMIT_S = 120
"""Longer than the slowest bus test by far; a hang ends the test process with every stack."""


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Bound every bus test, synchronous ones too (a blocking portal cannot use fail_after)."""
    faulthandler.dump_traceback_later(TIME_LIMIT_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


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

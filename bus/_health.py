"""A sink's health, logged once per change: the one log stream an operator alerts on.

The runtime logs what happens to a batch (``sink_retrying``, ``sink_batch_rejected``, ...); those
are for reading after the fact. An alert wants transitions instead: one ``sink_state_changed``
event when a sink starts retrying, one when it recovers, one when it first quarantines a point,
fails or closes, however many batches it takes. ``SinkHealthLog`` keeps the state and logs only
when it changes, so a sink retrying the same batch a hundred times says so once.

States (``trainbus.bus._stats.SinkHealth``): ``starting`` until the sink is open, then
``healthy`` (not logged: the usual start is no news); ``retrying`` after a retryable error or a
crash of ``open``/``write`` until a send succeeds; ``quarantined`` once points were held back
(sticky for the run: a recovery from ``retrying`` returns to it, not to ``healthy``); ``failed``
when disabled; ``closed`` at the end (a warning when events are left for ``trainbus sync``).
``failed`` and ``closed`` are final.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from trainbus.bus._stats import SinkHealth

__all__ = ["STATE_CHANGED", "SinkHealthLog"]

log = structlog.get_logger(__name__)

STATE_CHANGED: Final = "sink_state_changed"
"""The structlog event name of every transition."""

_BAD: Final[frozenset[SinkHealth]] = frozenset({"retrying", "quarantined", "failed"})
_FINAL: Final[frozenset[SinkHealth]] = frozenset({"failed", "closed"})


class SinkHealthLog:
    """One sink's health; ``enter`` logs a transition, staying in a state logs nothing."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.state: SinkHealth = "starting"
        self._quarantined = False

    def enter(self, state: SinkHealth, *, warning: bool = False, **details: Any) -> None:
        """Move to ``state``; ``details`` (an error, counts) go into the log event, a warning
        for the bad states and when ``warning`` says so (a sink closed with a backlog).

        A final state is never left: a sink closed after it failed stays ``failed``. The first
        ``healthy`` is not news (``bus_started`` named the sinks) and is not logged.
        """
        if state == "quarantined":
            self._quarantined = True
        if state == self.state or self.state in _FINAL:
            return
        previous, self.state = self.state, state
        if previous == "starting" and state == "healthy":
            return
        report = log.warning if warning or state in _BAD else log.info
        report(STATE_CHANGED, sink=self.sink, state=state, previous=previous, **details)

    def delivered(self, **details: Any) -> None:
        """A send (or an open) succeeded: back to ``healthy``, or to ``quarantined``."""
        self.enter("quarantined" if self._quarantined else "healthy", **details)

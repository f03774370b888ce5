"""What the sinks of a trainer's run ask the training side for, read once when training starts.

The trainer sees its run only through the bus the launcher hands it, so this is where it learns
what the run's sinks want from the model: today the tensors to histogram
(``Sink.wants_histograms``), asked of the sinks of this process's bus, the only ones that can
receive the events on this rank.
"""

from __future__ import annotations

from trainbus.bus._bus import Bus
from trainbus.bus._events import HistogramSource

__all__ = ["histogram_sources"]


def histogram_sources(bus: Bus | None) -> frozenset[HistogramSource]:
    """The tensors (``"gradients"``, ``"parameters"``) any sink of ``bus`` wants histograms of;
    none without a bus."""
    if bus is None:
        return frozenset()
    wanted: set[HistogramSource] = set()
    for sink in bus.sinks:
        wanted.update(sink.wants_histograms)
    return frozenset(wanted)

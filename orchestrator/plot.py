"""``trainbus plot RUN_DIR -o curves.png``: loss and evaluation curves drawn from the journal.

The journal already holds every logged number with its step, so a plot needs neither TensorBoard
nor a tracker. Matplotlib runs on its non-interactive Agg backend (no display needed) and is
imported only here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Evaluate, Event, Log
from trainbus.bus._files import replace_file
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator.rundir import RunDir

__all__ = ["Curves", "collect_curves", "plot_run"]

_SKIP_SUFFIXES = ("_runtime", "_per_second", "epoch")

Curves = dict[str, list[tuple[int, float]]]
"""Series name -> (global_step, value) points, in journal order."""


def _add(curves: Curves, name: str, step: int, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return
    curves.setdefault(name, []).append((step, float(value)))


def collect_curves(events: Iterable[Event]) -> tuple[Curves, Curves]:
    """(loss curves, other evaluation metrics) from a run's events."""
    losses: Curves = {}
    metrics: Curves = {}
    for event in events:
        if isinstance(event, Log) and "loss" in event.logs:
            _add(losses, "train loss", event.global_step, event.logs["loss"])
        elif isinstance(event, Evaluate):
            for key, value in event.metrics.items():
                if key.endswith(_SKIP_SUFFIXES):
                    continue
                target = losses if key.endswith("loss") else metrics
                _add(target, key.replace("_", " ", 1), event.global_step, value)
    return losses, metrics


def plot_run(run_dir: RunDir, output: Path) -> Path:
    """Draw ``run_dir``'s curves into ``output`` (PNG), written atomically; returns the path."""
    if not run_dir.journal_path.exists():
        raise ConfigurationError(f"{str(run_dir.path)!r} has no journal to plot")
    losses, metrics = collect_curves(JournalReader(run_dir.journal_path).read_from(0))
    if not losses and not metrics:
        raise ConfigurationError(f"run {str(run_dir.path)!r} has logged no loss or metric yet")
    if output.suffix.lower() != ".png":
        raise ConfigurationError(f"-o/--output must name a .png file, got {str(output)!r}")
    if not output.parent.is_dir():
        raise ConfigurationError(f"-o/--output: directory {str(output.parent)!r} does not exist")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(losses, "loss")] + ([(metrics, "evaluation metrics")] if metrics else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    try:
        for ax, (curves, title) in zip(axes[0], panels, strict=True):
            for name, points in curves.items():
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=name)
            ax.set_title(title)
            ax.set_xlabel("global step")
            ax.grid(alpha=0.3)
            if curves:
                ax.legend()
        fig.suptitle(run_dir.path.name)
        fig.tight_layout()
        replace_file(output, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return output

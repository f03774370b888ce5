"""What the W&B sink hands the SDK for each event, as transformers' ``WandbCallback`` shapes it.

Pure functions from events to the SDK's inputs (history rows, summary values, artifact names,
aliases and metadata); the sink (``trainbus.sinks.wandb``) calls the SDK with them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Final

from trainbus.bus._events import Artifact, Histograms, TensorHistogram
from trainbus.sinks._rewrite import rewrite_logs

__all__ = [
    "SINGLE_VALUE_SCALARS",
    "STEP_METRIC",
    "artifact_aliases",
    "artifact_metadata",
    "artifact_name",
    "histogram_edges",
    "histogram_keys",
    "log_row",
    "predict_row",
]

STEP_METRIC: Final = "train/global_step"
"""The step metric of every other metric (``define_metric("*", step_metric=...)``)."""
SINGLE_VALUE_SCALARS: Final = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
    }
)
"""Logged once per run; transformers puts them in the run summary rather than the history."""


def log_row(logs: Mapping[str, Any], global_step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, row)`` for a ``Log``: the single-value scalars for the summary, the rest under
    ``train/``/``eval/`` with the step metric for the history (empty when nothing is left)."""
    summary: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for key, value in logs.items():
        if value is None:
            continue
        if key in SINGLE_VALUE_SCALARS:
            summary[key] = value
        else:
            series[key] = value
    row = {**rewrite_logs(series), STEP_METRIC: global_step} if series else {}
    return summary, row


def predict_row(metrics: Mapping[str, Any], global_step: int) -> dict[str, Any]:
    """``predict()``'s metrics under ``test/``, at ``global_step``.

    Transformers logs them without the step metric and the SDK's ``step_sync`` fills in the
    last one the run logged; a ``predict()`` after ``train()`` resumes the run here in a new
    session, which has no last step to fill in, so the row says it itself (the same value).
    """
    row = rewrite_logs({k: v for k, v in metrics.items() if v is not None})
    return {**row, STEP_METRIC: global_step} if row else {}


def histogram_edges(histogram: TensorHistogram) -> list[float]:
    """The bin edges of ``histogram``: equal bins from ``low`` to ``high``, as ``torch.linspace``
    gives them to ``wandb.watch``; ``[low, high]`` for its one bin when they are equal."""
    bins = len(histogram.counts)
    if bins <= 1 or histogram.low == histogram.high:
        return [histogram.low, histogram.high]
    width = (histogram.high - histogram.low) / bins
    return [histogram.low + i * width for i in range(bins)] + [histogram.high]


def histogram_keys(event: Histograms) -> dict[str, TensorHistogram]:
    """The history keys ``wandb.watch`` gives: ``gradients/<name>`` or ``parameters/<name>``."""
    return {f"{event.source}/{name}": h for name, h in event.histograms.items()}


def artifact_name(run_id: str, run_name: str, output_dir: str) -> str:
    """``model-<run name>`` when the run was given a name of its own, else ``model-<run id>``
    (transformers' rule: a run name equal to ``output_dir`` is no name of its own)."""
    named = run_name and run_name != output_dir
    return f"model-{run_name if named else run_id}"


def artifact_aliases(event: Artifact) -> list[str]:
    """``final_model`` for the final model; a checkpoint's epoch and step otherwise."""
    if event.kind == "model":
        return ["final_model"]
    return [f"epoch_{round(event.epoch, 2)}", f"checkpoint_global_step_{event.global_step}"]


def artifact_metadata(summary: Mapping[str, Any], event: Artifact) -> dict[str, Any]:
    """The run summary's numbers (not the SDK's ``_``-keys), plus ``final_model`` for the final
    model, as transformers describes the model it uploads."""
    metadata: dict[str, Any] = {
        key: value
        for key, value in summary.items()
        if isinstance(value, numbers.Number) and not key.startswith("_")
    }
    if event.kind == "model":
        metadata["final_model"] = True
    return metadata

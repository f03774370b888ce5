"""Decisions every rank must take alike: the plan they start with, and the choices a value
that may differ between ranks would otherwise split.

Every rank of a job runs the same loop, and the loop's collectives (the gradient all-reduce of
each update, the flag agreement, evaluations, saves) happen at steps its plan decides: the run
length, the batches of an epoch, the accumulation window, the log, evaluation and save
intervals, the step a resumed run starts from. Ranks whose plans differ (a data set of another
length on one node, a different ``gradient_accumulation_steps``, a checkpoint one rank resumes
from and another does not) would meet in different collectives and wait there until the process
group's timeout. So at setup every rank gathers the others' plan in one small exchange and, where
they differ, every rank raises the same ``ConfigurationError`` naming the fields and each rank's
value, before the first step.

Later, choices that read values which may differ between ranks (a user's ``compute_metrics``
may depend on the rank) take rank 0's: the best checkpoint and what follows the tracked metric
(``rank_zero_metric``). Whether every rank can read a checkpoint (resume, the best model at the
end) is agreed in ``trainbus.trainer._visibility``. The control flags themselves are
agreed by ``trainbus.trainer._distributed.Distributed.merge`` at the loop's decision points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._data import has_length
from trainbus.trainer._plan import RunPlan
from trainbus.trainer._run_info import best_metric_key
from trainbus.trainer._state import TrainerState

__all__ = [
    "check_same_plan",
    "data_length",
    "data_lengths",
    "rank_zero_metric",
    "run_fingerprint",
]

_ARGUMENTS = (
    "gradient_accumulation_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "eval_strategy",
    "save_strategy",
    "logging_strategy",
    "metric_for_best_model",
    "load_best_model_at_end",
    "eval_on_start",
    "save_only_model",
    "include_num_input_tokens_seen",
    "average_tokens_across_devices",
)
"""The arguments that decide which collectives a step takes."""


class Group(Protocol):
    """What these choices need from the process group (``Distributed``)."""

    enabled: bool

    def at(self, doing: str) -> None: ...
    def gather(self, obj: Any) -> list[Any]: ...
    def from_rank_zero(self, value: float) -> float: ...


def run_fingerprint(
    args: TrainingArguments,
    plan: RunPlan,
    state: TrainerState,
    *,
    train_length: int | None,
    eval_lengths: Mapping[str, int | None],
) -> dict[str, Any]:
    """What must be equal on every rank, as plain data (small: it is gathered once).

    Args:
        args: the run's arguments.
        plan: the run length this rank worked out.
        state: this rank's fresh or resumed state (its intervals and starting step).
        train_length: the training set's length on this rank, ``None`` without one.
        eval_lengths: each evaluation set's length by name, ``None`` without one.
    """
    fingerprint: dict[str, Any] = {name: getattr(args, name) for name in _ARGUMENTS}
    fingerprint.update(
        max_steps=plan.max_steps,
        num_train_epochs=plan.num_train_epochs,
        batches_per_epoch=plan.batches_per_epoch,
        train_dataset_length=train_length,
        eval_dataset_lengths=dict(eval_lengths),
        logging_steps=state.logging_steps,
        eval_steps=state.eval_steps,
        save_steps=state.save_steps,
        resumed_global_step=state.global_step,
    )
    return {key: _plain(value) for key, value in fingerprint.items()}


def check_same_plan(group: Group, fingerprint: Mapping[str, Any]) -> None:
    """Raise on every rank, naming each field whose value differs between ranks.

    Args:
        group: the process group (one ``all_gather_object`` of ``fingerprint``).
        fingerprint: this rank's ``run_fingerprint``.
    """
    every = group.gather(dict(fingerprint))
    differing = sorted(
        {key for plan in every for key in plan if any(p.get(key) != plan[key] for p in every)}
    )
    if not differing:
        return
    details = "; ".join(
        f"{key}: " + ", ".join(f"rank {rank} has {p.get(key)!r}" for rank, p in enumerate(every))
        for key in differing
    )
    raise ConfigurationError(
        f"the ranks of this job disagree on {', '.join(differing)} ({details}); every rank must "
        "run the same configuration on data of the same length, or they would wait for each "
        "other in different collectives"
    )


def rank_zero_metric(
    group: Group, args: TrainingArguments, metrics: dict[str, Any]
) -> dict[str, Any]:
    """``metrics`` with the tracked metric (``metric_for_best_model``) replaced by rank 0's.

    The best checkpoint, the save it decides under ``save_strategy="best"`` and a schedule that
    follows the metric must be the same on every rank even when ``compute_metrics`` is not.
    A metric missing here is left to ``record_best``'s error (every rank lacking it raises).
    """
    key = best_metric_key(args)
    if not group.enabled or key is None or key not in metrics:
        return metrics
    value = metrics[key]
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    group.at("taking rank 0's value of the tracked metric")
    return {**metrics, key: group.from_rank_zero(float(number))}


def data_length(dataset: object) -> int | None:
    """``len(dataset)``, or ``None`` for a data set without one (or no data set)."""
    if dataset is None or not has_length(dataset):
        return None
    return len(dataset)  # type: ignore[arg-type]  # has_length checked that it has one


def data_lengths(datasets: object) -> dict[str, int | None]:
    """The length of each evaluation set by name (one unnamed set is ``""``)."""
    if isinstance(datasets, Mapping):
        return {str(name): data_length(part) for name, part in datasets.items()}
    return {} if datasets is None else {"": data_length(datasets)}


def _plain(value: Any) -> Any:
    """Enums and other values as text, so ranks compare what the user set."""
    if value is None or isinstance(value, bool | int | float | str | dict | list):
        return value
    return str(value)

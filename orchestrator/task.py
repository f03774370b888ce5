"""From a validated ``TrainConfig`` to a ready ``Trainer`` and the orchestrator that will run it.

Order matters: the cheap checks that need no user code (``report_to`` names, a writable
``output_dir``) run first, then the factories are imported and called. Nothing touches the disk
until ``Orchestrator.__aenter__``, so a failure here leaves no half-written run behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._sink import Sink
from trainbus.orchestrator.config import (
    TrainConfig,
    call_factory,
    check_writable_dir,
    load_factory,
)
from trainbus.orchestrator.registry import IntegrationChoice, explain_report_to
from trainbus.orchestrator.run import Orchestrator

__all__ = ["PreparedRun", "dry_run", "prepare_run"]


@dataclass
class PreparedRun:
    """A trainer built from a config file, and the orchestrator that will own its run.

    The trainer's launcher is that orchestrator: ``trainer.train()`` then ``trainer.evaluate()``
    open and continue the one run.
    """

    trainer: Any
    orchestrator: Orchestrator


def _arguments(config: TrainConfig, overrides: Mapping[str, Any]) -> Any:
    from trainbus.trainer._arguments import TrainingArguments

    values = {**config.args, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return TrainingArguments.from_dict(values)
    except ConfigurationError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"[args]: {exc}") from exc


def _user_sink(spec: str, index: int) -> Sink:
    sink = call_factory(spec, {}, field=f"sinks[{index}]")
    if not isinstance(sink, Sink):
        raise ConfigurationError(
            f"sinks[{index}] = {spec!r} must build a bus.sink.Sink, got {type(sink).__name__}"
        )
    return sink


def _check(
    config: TrainConfig, overrides: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[Any, list[IntegrationChoice]]:
    """The checks that need no user code: arguments, ``report_to``, ``output_dir``."""
    args = _arguments(config, overrides)
    choices = explain_report_to(args.report_to, env)
    check_writable_dir(Path(args.output_dir), field="output_dir")
    if args.eval_strategy != "no" and config.eval_dataset is None:
        raise ConfigurationError(
            f"args.eval_strategy = {args.eval_strategy!r} needs an eval_dataset factory"
        )
    return args, choices


def dry_run(
    config: TrainConfig,
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Validate ``config`` as ``prepare_run`` does and say what a run would start; no training.

    Every factory is imported (not called: building a model or a dataset is the run's work), and
    every integration gets one line, picked or skipped with the reason and the fix. Writes
    nothing. Returns the lines ``trainbus train --dry-run`` prints.
    """
    args, choices = _check(config, overrides or {}, dict(os.environ) if env is None else env)
    factories = {
        "model": config.model,
        "train_dataset": config.train_dataset,
        "eval_dataset": config.eval_dataset,
        "compute_metrics": config.compute_metrics,
        **{f"callbacks[{i}]": spec for i, spec in enumerate(config.callbacks)},
        **{f"sinks[{i}]": spec for i, spec in enumerate(config.sinks)},
    }
    for field, spec in factories.items():
        if spec:
            load_factory(spec, field=field)
    picked = [choice.name for choice in choices if choice.picked]
    return [
        f"output_dir   {args.output_dir}",
        f"report_to    {args.report_to!r} -> {picked}",
        *(choice.line() for choice in choices),
        *(f"sink         {spec} (imports)" for spec in config.sinks),
    ]


def prepare_run(
    config: TrainConfig,
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    flush_timeout: float = 30.0,
) -> PreparedRun:
    """Validate ``config`` and build everything; writes nothing."""
    environ = dict(os.environ) if env is None else env
    args, _ = _check(config, overrides or {}, environ)

    from trainbus.trainer._early_stopping import EarlyStoppingCallback
    from trainbus.trainer._rng import set_seed
    from trainbus.trainer._trainer import Trainer

    set_seed(args.seed)  # the model's initial weights come from the factory: seed them too
    model = call_factory(config.model, config.model_kwargs, field="model")
    train_dataset = (
        call_factory(config.train_dataset, config.train_dataset_kwargs, field="train_dataset")
        if config.train_dataset
        else None
    )
    eval_dataset = (
        call_factory(config.eval_dataset, config.eval_dataset_kwargs, field="eval_dataset")
        if config.eval_dataset
        else None
    )
    metrics = (
        call_factory(config.compute_metrics, {}, field="compute_metrics")
        if config.compute_metrics
        else None
    )
    callbacks: list[Any] = [
        call_factory(spec, {}, field=f"callbacks[{i}]") for i, spec in enumerate(config.callbacks)
    ]
    if config.early_stopping is not None:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=config.early_stopping.patience,
                early_stopping_threshold=config.early_stopping.threshold,
            )
        )
    sinks = [_user_sink(spec, i) for i, spec in enumerate(config.sinks)]
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=metrics,
        callbacks=callbacks,
        sinks=sinks,
    )
    orchestrator = Orchestrator.for_trainer(trainer, env=environ, flush_timeout=flush_timeout)
    trainer.launcher = orchestrator
    return PreparedRun(trainer=trainer, orchestrator=orchestrator)

"""The ``Trainer``'s optimizer and learning-rate schedule: the ``create_*`` methods and their rules.

One of the parts ``Trainer`` (``trainbus.trainer._trainer``) is made of, each a mixin holding one
idea of transformers' public API. This one holds the overridable methods only: which class each
``optim`` name stands for and the weight-decay groups are ``trainbus.trainer._optimizers``'s, the
schedules ``trainbus.trainer._schedules``'s. The loop calls ``create_optimizer_and_scheduler``
once per ``train()``. The attributes it reads are the ``Trainer``'s, declared here for the type
checker.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._optimizers import (
    build_optimizer,
    decay_parameter_names,
    optimizer_cls_and_kwargs,
    weight_groups,
)
from trainbus.trainer._schedules import create_scheduler

__all__ = ["OptimizerClsAndKwargs", "Optimizers", "OptimizersMixin"]

Optimizers = tuple[torch.optim.Optimizer | None, LRScheduler | None]
OptimizerClsAndKwargs = tuple[Any, dict[str, Any]]


class OptimizersMixin:
    """``create_optimizer``, ``create_scheduler`` and their helpers, for a ``Trainer``."""

    args: TrainingArguments
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    lr_scheduler: LRScheduler | None
    optimizer_cls_and_kwargs: OptimizerClsAndKwargs | None
    _created_scheduler: bool

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """The optimizer, then the schedule over ``num_training_steps`` (each unless given).

        Override this, or ``create_optimizer`` / ``create_scheduler``, for other ones; the loop
        calls it once per ``train()``, before ``on_train_begin``.
        """
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build ``self.optimizer`` unless it exists, and return it.

        Args:
            model: whose parameters to optimise; ``self.model`` by default.

        The parameters form two groups (``get_decay_parameter_names`` get ``weight_decay``,
        the others none), as in transformers; with ``weight_decay`` 0 the two would be alike,
        and they form one group instead: every group costs each step another pass of the
        optimizer (about 3 % of a small model's step on a CPU, measured with
        ``benchmarks.bench_trainer``), for the same update. Checkpoints still hold
        transformers' two groups (``trainbus.trainer._param_groups`` converts). The class and
        its keyword arguments come from ``optimizer_cls_and_kwargs`` (constructor argument)
        when given, else from ``get_optimizer_cls_and_kwargs(args)``.
        """
        if self.optimizer is None:
            target = self.model if model is None else model
            groups = weight_groups(
                target, self.get_decay_parameter_names(target), self.args.weight_decay
            )
            if self.args.weight_decay == 0:  # alike groups: one pass of the optimizer per step
                groups = [{"params": [p for g in groups for p in g["params"]], "weight_decay": 0.0}]
            optimizer_cls, kwargs = (
                self.optimizer_cls_and_kwargs
                if self.optimizer_cls_and_kwargs is not None
                else self.get_optimizer_cls_and_kwargs(self.args, target)
            )
            self.optimizer = build_optimizer(target, optimizer_cls, kwargs, groups)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LRScheduler:
        """Build ``self.lr_scheduler`` unless it exists, and return it.

        Args:
            num_training_steps: the run's length in optimizer steps (warm-up ratios apply to it).
            optimizer: the optimizer to schedule; ``self.optimizer`` by default.
        """
        if self.lr_scheduler is None:
            target = optimizer if optimizer is not None else self.optimizer
            if target is None:
                raise RuntimeError(
                    "create_scheduler() needs an optimizer: call create_optimizer() first or "
                    "pass optimizer=."
                )
            self.lr_scheduler = create_scheduler(
                self.args.lr_scheduler_type,
                target,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_scheduler = True
        return self.lr_scheduler

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: TrainingArguments, model: nn.Module | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The optimizer class ``args.optim`` names and its keyword arguments (``optim_args``
        parsed), without the parameters.

        Args:
            args: the training arguments.
            model: the model (Hugging Face's optimizers that need one are not implemented).
        """
        return optimizer_cls_and_kwargs(args)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Names of ``model``'s parameters that get weight decay: all but biases and norms.

        Args:
            model: the model whose ``named_parameters()`` names are returned.
        """
        return decay_parameter_names(model)

"""The ``Trainer``'s loaders: the ``get_*_dataloader`` methods a subclass overrides.

One of the parts ``Trainer`` (``trainbus.trainer._trainer``) is made of, each a mixin holding one
idea of transformers' public API. This one chooses which data set a loader reads and keeps
evaluation loaders for reuse; how a loader is built from the arguments lives in
``trainbus.trainer._loaders``, and the training loop only calls these methods, so a subclass that
overrides one changes what every caller gets. The attributes it reads are the ``Trainer``'s,
declared here for the type checker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._collators import DataCollator
from trainbus.trainer._distributed import Distributed
from trainbus.trainer._loaders import evaluation_loader, training_loader

__all__ = ["DataMixin"]


class DataMixin:
    """The training, evaluation and test loaders of a ``Trainer``."""

    args: TrainingArguments
    train_dataset: Dataset[Any] | None
    eval_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None
    _eval_dataloaders: dict[str, DataLoader[Any]]
    # read by trainbus.trainer._loaders
    model: nn.Module
    device: torch.device
    processing_class: Any
    data_collator: DataCollator
    label_names: list[str]
    _signature_columns: frozenset[str] | None
    _dist: Distributed

    def get_train_dataloader(self) -> DataLoader[Any]:
        """The training loader, in the order of ``train_sampling_strategy``: shuffled per epoch
        with a seed a resume can replay (see ``trainbus.trainer._samplers``)."""
        if self.train_dataset is None:
            raise ConfigurationError(
                "train() needs a train_dataset; pass Trainer(train_dataset=...)"
            )
        return training_loader(self, self.train_dataset)

    def get_eval_dataloader(
        self, eval_dataset: Dataset[Any] | str | None = None
    ) -> DataLoader[Any]:
        """A sequential loader over ``eval_dataset`` (default: the trainer's).

        Parameters:
            eval_dataset: a data set, or the name of one in the trainer's dict of them. With
                ``dataloader_persistent_workers`` the loader is built once per name and reused.
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ConfigurationError("evaluation needs an eval_dataset (argument or Trainer(...))")
        key = eval_dataset if isinstance(eval_dataset, str) else "eval"
        if self.args.dataloader_persistent_workers and key in self._eval_dataloaders:
            return self._eval_dataloaders[key]
        if isinstance(eval_dataset, str):
            dataset = self._named_eval_dataset(eval_dataset)
        else:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = evaluation_loader(self, dataset, "evaluation")
        if self.args.dataloader_persistent_workers:
            self._eval_dataloaders[key] = loader
        return loader

    def get_test_dataloader(self, test_dataset: Dataset[Any]) -> DataLoader[Any]:
        """A sequential loader over ``test_dataset``, for ``predict()``."""
        return evaluation_loader(self, test_dataset, "test")

    def _named_eval_dataset(self, name: str) -> Any:
        if not isinstance(self.eval_dataset, Mapping) or name not in self.eval_dataset:
            known = sorted(self.eval_dataset) if isinstance(self.eval_dataset, Mapping) else []
            raise ConfigurationError(
                f"eval_dataset {name!r} names no data set of Trainer(eval_dataset=...): it needs "
                f"a dict of data sets with that key (has {known})."
            )
        return self.eval_dataset[name]

"""How a ``Trainer`` builds its loaders from its arguments, model and processing class.

One place for what Hugging Face spreads over ``_get_dataloader`` and the sampler methods: the
sampler ``train_sampling_strategy`` names (seeded by ``data_seed``, else ``seed``), the collator
behind the filter of unused columns, and the ``dataloader_*`` options. The ``Trainer``'s
overridable ``get_*_dataloader`` methods call these.

With several ranks, an evaluation (or test) set with a length is split between them batch by
batch (`EvaluationShard`); the evaluation loop gathers what the ranks computed back into the
data set's order. An iterable evaluation set is read whole on every rank, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, Sampler

from trainbus.trainer._collators import DataCollator
from trainbus.trainer._columns import ColumnFilter, signature_columns
from trainbus.trainer._data import (
    LoaderOptions,
    eval_dataloader,
    eval_sampler,
    has_length,
    train_dataloader,
    train_sampler,
)
from trainbus.trainer._samplers import EvaluationShard

if TYPE_CHECKING:
    from trainbus.trainer._trainer_data import DataMixin

__all__ = ["collator_for", "evaluation_loader", "training_loader"]


def training_loader(trainer: DataMixin, dataset: Dataset[Any]) -> DataLoader[Any]:
    """The training loader over ``dataset``, in the order of ``train_sampling_strategy``."""
    args = trainer.args
    sampler = train_sampler(
        dataset,
        strategy=args.train_sampling_strategy,
        seed=_order_seed(trainer),
        batch_size=args.train_batch_size * args.gradient_accumulation_steps,
        input_name=_main_input_name(trainer.processing_class),
        length_column=args.length_column_name,
        rank=trainer._dist.rank,
        world_size=trainer._dist.world_size,
    )
    return train_dataloader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        collator=collator_for(trainer, "training"),
        seed=args.seed,
        sampler=sampler,
        options=LoaderOptions.from_args(args, trainer.device),
    )


def evaluation_loader(trainer: DataMixin, dataset: Any, description: str) -> DataLoader[Any]:
    """A loader over an evaluation (or test) set: in order, or grouped by length; with several
    ranks, this rank's batches of that order (`EvaluationShard`)."""
    args = trainer.args
    sampler = eval_sampler(
        dataset,
        strategy=args.train_sampling_strategy,
        seed=_order_seed(trainer),
        batch_size=args.eval_batch_size,
        input_name=_main_input_name(trainer.processing_class),
        length_column=args.length_column_name,
    )
    options = LoaderOptions.from_args(args, trainer.device)
    collator = collator_for(trainer, description)
    if trainer._dist.enabled and has_length(dataset):
        return _sharded_loader(trainer, dataset, sampler, collator, options)
    return eval_dataloader(
        dataset,
        batch_size=args.eval_batch_size,
        collator=collator,
        sampler=sampler,
        options=options,
    )


def _sharded_loader(
    trainer: DataMixin,
    dataset: Any,
    sampler: Sampler[int] | None,
    collator: DataCollator,
    options: LoaderOptions,
) -> DataLoader[Any]:
    """This rank's batches of the evaluation order; ``drop_last`` moves into the shard, which
    cuts the batches (torch refuses it beside a batch sampler). The process group is joined
    here if training has not joined it yet: the evaluation loop gathers over it."""
    trainer._dist.setup()
    order = range(len(dataset)) if sampler is None else list(sampler)
    shard = EvaluationShard(
        order,
        trainer.args.eval_batch_size,
        rank=trainer._dist.rank,
        world_size=trainer._dist.world_size,
        drop_last=options.drop_last,
    )
    kwargs = options.loader_kwargs(dataset)
    kwargs.pop("drop_last", None)
    return DataLoader(dataset, batch_sampler=shard, collate_fn=collator, **kwargs)


def collator_for(trainer: DataMixin, description: str) -> DataCollator:
    """The trainer's collator, behind a filter of unused columns (``remove_unused_columns``);
    the kept columns are worked out once per trainer."""
    if not trainer.args.remove_unused_columns:
        return trainer.data_collator
    if trainer._signature_columns is None:
        trainer._signature_columns = signature_columns(trainer.model, trainer.label_names)
    return ColumnFilter(
        trainer.data_collator,
        trainer._signature_columns,
        model_name=type(trainer.model).__name__,
        description=description,
    )


def _order_seed(trainer: DataMixin) -> int:
    args = trainer.args
    return args.seed if args.data_seed is None else args.data_seed


def _main_input_name(processing_class: Any) -> str:
    """What length grouping measures: the processing class's first model input."""
    names = getattr(processing_class, "model_input_names", None)
    return str(names[0]) if names else "input_ids"

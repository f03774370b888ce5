"""What trainbus supports of transformers' ``Trainer`` API: the one registry, and the refusals.

A script written for ``transformers.Trainer`` runs on ours after a one-line import change, or it
fails before training with one line saying which part trainbus does not support yet. This module
is where that is decided, once:

* `FIELDS`: every ``TrainingArguments`` field of transformers, in its order, either implemented
  (it behaves as in transformers) or refused (any value but the default raises a
  `ConfigurationError` naming the field, before training starts;
  ``trainbus.trainer._argument_checks`` applies it);
* `TRAINER_ARGUMENTS`, `TRAINER_MEMBERS`, `ARGUMENTS_MEMBERS`: transformers' ``Trainer``
  constructor arguments and the public members of ``Trainer`` and ``TrainingArguments``. Whether
  we implement one is read from our classes, not written down, so it cannot drift;
* `RefusesUnsupportedMethods`: answers a transformers member our class lacks with
  `UnsupportedError` (an ``AttributeError``, so ``hasattr`` keeps working) instead of Python's
  bare "no attribute".

``trainbus.trainer._compatibility`` renders all of it as ``docs/compatibility.md``. transformers'
names are stored here so that neither needs transformers; the tests compare them with the
installed transformers, so a field it adds fails the suite until it is implemented or refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from trainbus.bus._errors import TrainbusError
from trainbus.trainer._optim_arguments import IMPLEMENTED_OPTIMIZERS

__all__ = [
    "ARGUMENTS_MEMBERS",
    "DEFAULT_EXCEPTIONS",
    "FIELDS",
    "MEMBER_NOTES",
    "OPTIMIZERS_IMPLEMENTED",
    "TABLE_PATH",
    "TRAINBUS_FIELDS",
    "TRAINER_ARGUMENTS",
    "TRAINER_MEMBERS",
    "RefusesUnsupportedMethods",
    "Support",
    "UnsupportedError",
    "refusal",
]

TABLE_PATH: Final = "docs/compatibility.md"
"""Where the table lives; every refusal points there."""

Status = Literal["implemented", "refused"]


@dataclasses.dataclass(frozen=True)
class Support:
    """What trainbus does with one transformers field.

    Args:
        status: ``"implemented"`` (behaves as in transformers) or ``"refused"`` (a value other
            than the default raises before training).
        note: one line for the table, and for the refusal message.
        values: for an implemented field that takes only some of transformers' values, those;
            empty when it takes them all.
        falsy_is_default: for a refused field, any false value (``""``, ``[]``, ``False``) counts
            as the default, as transformers reads it (``fsdp=""`` means no FSDP).
    """

    status: Status
    note: str = ""
    values: tuple[str, ...] = ()
    falsy_is_default: bool = False


def _yes(note: str = "", *, values: tuple[str, ...] = ()) -> Support:
    return Support("implemented", note, values)


def _no(note: str = "", *, falsy_is_default: bool = False) -> Support:
    return Support("refused", note, falsy_is_default=falsy_is_default)


_SCRIPTS: Final = "read by scripts, not by the Trainer (as in transformers)"
_HUB: Final = "read when pushing (docs/push.md)"
_DDP: Final = "a DistributedDataParallel option; torchrun runs use torch's defaults"
_TRACKIO: Final = "no Trackio sink"

OPTIMIZERS_IMPLEMENTED: Final = IMPLEMENTED_OPTIMIZERS
"""The ``optim`` names trainbus builds (defined with the optimizers' own argument rules)."""

FIELDS: Final[Mapping[str, Support]] = {
    "output_dir": _yes("None becomes 'trainer_output', as in transformers"),
    "per_device_train_batch_size": _yes(),
    "num_train_epochs": _yes("finite; 0 with max_steps=-1 is refused (no zero-length training)"),
    "max_steps": _yes("0 is refused (no zero-length training)"),
    "learning_rate": _yes("finite"),
    "lr_scheduler_type": _yes("every transformers SchedulerType"),
    "lr_scheduler_kwargs": _yes("a dict, or its JSON text"),
    "warmup_steps": _yes(),
    "optim": _yes(
        "torch's own optimizers; transformers' other names are refused naming the value",
        values=OPTIMIZERS_IMPLEMENTED,
    ),
    "optim_args": _yes(),
    "weight_decay": _yes("finite; at 0 one parameter group instead of two alike ones"),
    "adam_beta1": _yes(),
    "adam_beta2": _yes(),
    "adam_epsilon": _yes(),
    "optim_target_modules": _no("GaLore and APOLLO optimizers"),
    "gradient_accumulation_steps": _yes(),
    "average_tokens_across_devices": _yes(),
    "max_grad_norm": _yes("finite"),
    "label_smoothing_factor": _no("label smoothing of the loss"),
    "bf16": _yes(),
    "fp16": _yes(),
    "bf16_full_eval": _yes(),
    "fp16_full_eval": _yes(),
    "tf32": _yes(),
    "activation_checkpointing": _yes(),
    "activation_checkpointing_kwargs": _yes("a dict, or its JSON text"),
    "gradient_checkpointing": _yes("deprecated alias of activation_checkpointing"),
    "gradient_checkpointing_kwargs": _yes("deprecated alias of activation_checkpointing_kwargs"),
    "torch_compile": _yes("set by torch_compile_backend or torch_compile_mode, as in transformers"),
    "torch_compile_backend": _yes("'inductor' when torch_compile is on"),
    "torch_compile_mode": _yes(),
    "use_liger_kernel": _no("Liger kernels"),
    "liger_kernel_config": _no("Liger kernels"),
    "use_cache": _yes("written into the model's config when the Trainer is built"),
    "neftune_noise_alpha": _no("NEFTune embedding noise"),
    "torch_empty_cache_steps": _no("emptying the device cache every N steps"),
    "auto_find_batch_size": _no("retrying with smaller batches after running out of memory"),
    "logging_strategy": _yes(),
    "logging_steps": _yes(),
    "logging_first_step": _yes(),
    "log_on_each_node": _yes("should_log and get_process_log_level() follow it"),
    "logging_nan_inf_filter": _yes(),
    "include_num_input_tokens_seen": _yes("True and False mean 'all' and 'no', as in transformers"),
    "log_level": _yes("the level of trainbus's own events, as transformers sets its library's"),
    "log_level_replica": _yes("log_level on the processes that do not log (should_log)"),
    "disable_tqdm": _yes(),
    "report_to": _yes(
        "defaults to 'all' (transformers: 'none'); kept as given, the orchestrator resolves it"
    ),
    "run_name": _yes(),
    "project": _yes("kept with the run's arguments; transformers reads it only for Trackio"),
    "trackio_space_id": _no(_TRACKIO),
    "trackio_bucket_id": _no(_TRACKIO),
    "trackio_static_space_id": _no(_TRACKIO),
    "eval_strategy": _yes(),
    "eval_steps": _yes("defaults to logging_steps with the 'steps' strategy, as in transformers"),
    "eval_delay": _yes(),
    "per_device_eval_batch_size": _yes(),
    "prediction_loss_only": _yes(),
    "eval_on_start": _yes(),
    "eval_do_concat_batches": _yes(),
    "eval_use_gather_object": _no("gathering Python objects across ranks after evaluation"),
    "eval_accumulation_steps": _yes(),
    "include_for_metrics": _yes(),
    "batch_eval_metrics": _yes(),
    "save_only_model": _yes("resuming from such a checkpoint takes resume_only_model=True"),
    "save_strategy": _yes(),
    "save_steps": _yes(),
    "save_on_each_node": _yes(),
    "save_total_limit": _yes("rotation never deletes the best checkpoint"),
    "enable_jit_checkpoint": _no(
        "SIGTERM already stops a run gracefully, saving when save_strategy saves"
    ),
    "push_to_hub": _yes("to a directory, the MLflow model registry or the Hub (docs/push.md)"),
    "hub_token": _yes(_HUB),
    "hub_private_repo": _yes(_HUB),
    "hub_model_id": _yes("the destination: file:///<dir>, models:/<name> or a Hub repo id"),
    "hub_strategy": _yes("the MLflow registry adds a version per push at every strategy"),
    "hub_always_push": _yes(_HUB),
    "hub_revision": _yes(_HUB),
    "load_best_model_at_end": _yes(),
    "metric_for_best_model": _yes(),
    "greater_is_better": _yes(),
    "ignore_data_skip": _no("a resume always replays the data order up to the checkpoint"),
    "restore_callback_states_from_checkpoint": _yes(),
    "full_determinism": _yes("deterministic kernels only (torch.use_deterministic_algorithms)"),
    "seed": _yes(),
    "data_seed": _yes(),
    "use_cpu": _yes(),
    "accelerator_config": _no(
        "trainbus does not run on Accelerate; transformers turns None into an AcceleratorConfig"
    ),
    "parallelism_config": _no("Accelerate's parallelism configuration"),
    "dataloader_drop_last": _yes(),
    "dataloader_num_workers": _yes(),
    "dataloader_pin_memory": _yes("False with use_cpu, as in transformers"),
    "dataloader_persistent_workers": _yes(),
    "dataloader_prefetch_factor": _yes(),
    "dataloader_multiprocessing_context": _yes(),
    "dataloader_in_order": _yes(),
    "remove_unused_columns": _yes(),
    "label_names": _yes(),
    "train_sampling_strategy": _yes("'batch_rebalance' is refused"),
    "length_column_name": _yes(),
    "ddp_find_unused_parameters": _no(_DDP),
    "ddp_bucket_cap_mb": _no(_DDP),
    "ddp_broadcast_buffers": _no(_DDP),
    "ddp_static_graph": _no(_DDP),
    "ddp_backend": _no("the process-group backend is NCCL on GPUs, Gloo on CPUs"),
    "ddp_timeout": _yes("the process group's timeout, the last resort for a hung rank"),
    "fsdp": _no("Fully Sharded Data Parallel", falsy_is_default=True),
    "fsdp_config": _no("Fully Sharded Data Parallel"),
    "deepspeed": _no("DeepSpeed"),
    "debug": _no("underflow/overflow detection, TPU metrics", falsy_is_default=True),
    "skip_memory_metrics": _no("False: memory metrics are not collected yet"),
    "do_train": _yes(_SCRIPTS),
    "do_eval": _yes("set by an eval_strategy other than 'no'; " + _SCRIPTS),
    "do_predict": _yes(_SCRIPTS),
    "resume_from_checkpoint": _yes(
        "train() falls back to it when called without one (transformers' train() ignores it)"
    ),
    "local_rank": _yes("kept for argument parsers; local_process_index is the rank"),
}
"""Every field of transformers' ``TrainingArguments``, in transformers' order."""

TRAINBUS_FIELDS: Final[Mapping[str, str]] = {
    "warmup_ratio": "deprecated: the ratio moves to warmup_steps (transformers 5 dropped it)",
    "resume_only_model": "resume from a save_only_model checkpoint: weights and state only",
}
"""Our fields that transformers does not have, with the table's note."""

DEFAULT_EXCEPTIONS: Final[Mapping[str, object]] = {"output_dir": None, "report_to": "none"}
"""transformers' defaults where ours differ: ``output_dir``'s None means "trainer_output" in both;
``report_to="all"`` is a deliberate difference."""

TRAINER_ARGUMENTS: Final = (
    "model",
    "args",
    "data_collator",
    "train_dataset",
    "eval_dataset",
    "processing_class",
    "model_init",
    "compute_loss_func",
    "compute_metrics",
    "callbacks",
    "optimizers",
    "optimizer_cls_and_kwargs",
    "preprocess_logits_for_metrics",
)
"""transformers' ``Trainer.__init__`` parameters, in order."""

TRAINER_MEMBERS: Final = (
    "add_callback",
    "autocast_smart_context_manager",
    "call_model_init",
    "compute_loss",
    "compute_loss_context_manager",
    "create_accelerator_and_postprocess",
    "create_model_card",
    "create_optimizer",
    "create_optimizer_and_scheduler",
    "create_scheduler",
    "end",
    "evaluate",
    "evaluation_loop",
    "floating_point_ops",
    "get_batch_samples",
    "get_cp_size",
    "get_decay_parameter_names",
    "get_eval_dataloader",
    "get_learning_rates",
    "get_num_trainable_parameters",
    "get_optimizer_cls_and_kwargs",
    "get_optimizer_group",
    "get_sp_size",
    "get_test_dataloader",
    "get_total_train_batch_size",
    "get_tp_size",
    "get_train_dataloader",
    "hyperparameter_search",
    "init_hf_repo",
    "is_local_process_zero",
    "is_world_process_zero",
    "log",
    "log_metrics",
    "loss_is_scaled_for_ga",
    "metrics_format",
    "num_examples",
    "pop_callback",
    "predict",
    "prediction_step",
    "push_to_hub",
    "remove_callback",
    "save_metrics",
    "save_model",
    "save_state",
    "set_initial_training_values",
    "store_flos",
    "train",
    "training_step",
)
"""The public members of transformers' ``Trainer`` class, sorted."""

ARGUMENTS_MEMBERS: Final = (
    "ddp_timeout_delta",
    "default_optim",
    "device",
    "eval_batch_size",
    "get_process_log_level",
    "get_warmup_steps",
    "is_torch_greater_or_equal_than_2_8",
    "local_process_index",
    "main_process_first",
    "n_gpu",
    "parallel_mode",
    "place_model_on_device",
    "process_index",
    "set_dataloader",
    "set_evaluate",
    "set_logging",
    "set_lr_scheduler",
    "set_optimizer",
    "set_push_to_hub",
    "set_save",
    "set_testing",
    "set_training",
    "should_log",
    "should_save",
    "to_dict",
    "to_json_string",
    "to_sanitized_dict",
    "train_batch_size",
    "world_size",
)
"""The public members of transformers' ``TrainingArguments`` other than its fields, sorted."""

_CLASS_BODY: Final = "a name left over from transformers' field definitions, not an API"

MEMBER_NOTES: Final[Mapping[str, str]] = {
    "Trainer.push_to_hub": "to hub_model_id: a directory, the MLflow registry or the Hub",
    "Trainer.init_hf_repo": "checks the destination; creates a directory or a Hub repo",
    "Trainer.create_model_card": "trainbus's own card (docs/push.md)",
    "Trainer.hyperparameter_search": (
        "Optuna only, trials one after another in one process, each a run of its own "
        "(see docs/hyperparameter_search.md); Ray Tune, SigOpt and W&B sweeps are refused"
    ),
    "Trainer.create_accelerator_and_postprocess": "trainbus does not run on Accelerate",
    "Trainer.loss_is_scaled_for_ga": "a class attribute a subclass sets",
    "Trainer.get_cp_size": "context parallelism (Accelerate)",
    "Trainer.get_sp_size": "sequence parallelism (Accelerate)",
    "Trainer.get_tp_size": "tensor parallelism (Accelerate)",
    "Trainer.model_init": "a fresh model per train() (hyperparameter search)",
    "TrainingArguments.default_optim": _CLASS_BODY,
    "TrainingArguments.is_torch_greater_or_equal_than_2_8": _CLASS_BODY,
}
"""Notes for the table's method and argument rows, keyed ``Owner.name``."""


# --- refusing --------------------------------------------------------------------------------


class UnsupportedError(TrainbusError, AttributeError):
    """A transformers method or attribute trainbus does not provide yet.

    An ``AttributeError``, so ``hasattr(trainer, "push_to_hub")`` answers ``False`` as for any
    missing attribute, while calling it says why and where to read more.
    """


def refusal(subject: str, detail: str = "") -> str:
    """The one sentence that refuses a part of transformers' API.

    Args:
        subject: what is refused: a field (``"deepspeed"``), a value (``"optim='lion_8bit'"``) or
            a member (``"Trainer.push_to_hub"``).
        detail: what was given and what is supported, or why; appended in parentheses.
    """
    text = f"{subject} is not supported by trainbus yet; see {TABLE_PATH}"
    return f"{text} ({detail})." if detail else f"{text}."


class RefusesUnsupportedMethods:
    """Answers a transformers member the class lacks with `UnsupportedError`.

    Only the names transformers defines on the owner class are refused this way; any other
    missing attribute stays a plain ``AttributeError``. Python calls ``__getattr__`` only after
    normal lookup failed, so implemented members never reach it and it costs nothing on them.
    Hidden from type checkers, which would otherwise accept any attribute name on the class.
    """

    _transformers_owner: ClassVar[str] = "Trainer"
    _transformers_members: ClassVar[frozenset[str]] = frozenset(TRAINER_MEMBERS)

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name in type(self)._transformers_members:
                subject = f"{type(self)._transformers_owner}.{name}"
                raise UnsupportedError(refusal(subject, MEMBER_NOTES.get(subject, "")))
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
            )

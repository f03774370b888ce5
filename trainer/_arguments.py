"""`TrainingArguments`: the run's configuration, under Hugging Face's names and defaults.

Users' Hugging Face callbacks read ``args.<field>`` directly, so every field of ``transformers``
5.x is here, in its order, with its default, and the values ``__post_init__`` derives follow
transformers' (``trainbus.trainer._argument_checks`` holds those rules and the validation).
Whether trainbus honours a field, or refuses any value but the default, is decided in one place,
``trainbus.trainer._support``; ``docs/compatibility.md`` shows it, field by field.

Deliberate differences: ``report_to`` defaults to ``"all"`` and is kept raw (the orchestrator
resolves the names); every bad value (a NaN or an infinity included) raises a
`ConfigurationError` (a `ValueError`) whose message names the field, where Hugging Face sometimes
fails later or not at all; strategy fields hold plain strings (equal to transformers' string
enums); and two fields of our own: ``resume_only_model`` says that resuming from a checkpoint
without its optimizer, scheduler or RNG files is meant (Hugging Face skips them silently; we refuse
without it), and ``warmup_ratio`` is still read from old configs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import json
import logging
import math
import sys
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from trainbus.bus import _world
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._secrets import is_secret
from trainbus.trainer._argument_checks import (
    HUB_STRATEGIES,
    LOG_LEVELS,
    SAMPLING_STRATEGIES,
    START_METHODS,
    settle,
)
from trainbus.trainer._support import ARGUMENTS_MEMBERS, RefusesUnsupportedMethods

if TYPE_CHECKING:
    import torch

__all__ = ["ParallelMode", "TrainingArguments"]


class ParallelMode(enum.Enum):
    """How the processes of a run share the work; the values are transformers'."""

    NOT_PARALLEL = "not_parallel"
    NOT_DISTRIBUTED = "not_distributed"
    DISTRIBUTED = "distributed"
    SAGEMAKER_MODEL_PARALLEL = "sagemaker_model_parallel"
    SAGEMAKER_DATA_PARALLEL = "sagemaker_data_parallel"
    TPU = "tpu"


_SANITIZED_TYPES: Final = (bool, int, float, str)


def _cli(value: Any, **options: Any) -> Any:
    """A field's default with its ``HfArgumentParser`` options (``nargs``, ``const``,
    ``choices``), as transformers declares them, so ``--activation_checkpointing`` alone parses."""
    return dataclasses.field(default=value, metadata=options)


@dataclasses.dataclass(repr=False)
class TrainingArguments(RefusesUnsupportedMethods):
    """Everything a run is configured with; mutable because Hugging Face callbacks may edit it.

    The fields are transformers' (see ``docs/compatibility.md`` for what each does here), one per
    line in transformers' order, plus ``warmup_ratio`` and ``resume_only_model``. Where a type is a
    union, its members come in transformers' order: ``HfArgumentParser`` reads a command-line
    option's type from the union's first members, so scripts parse their flags as before.
    """

    _transformers_owner: ClassVar[str] = "TrainingArguments"
    _transformers_members: ClassVar[frozenset[str]] = frozenset(ARGUMENTS_MEMBERS)

    output_dir: str = "trainer_output"
    per_device_train_batch_size: int = 8
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, Any] | str | None = None
    warmup_steps: float = 0
    warmup_ratio: float | None = None
    """Deprecated (transformers 5 dropped it): the ratio moves to ``warmup_steps``, and this
    field reads ``None`` afterwards, so a copy of the arguments does not set both."""
    optim: str = "adamw_torch_fused"
    optim_args: str | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim_target_modules: None | str | list[str] = None  # noqa: RUF036 (HfArgumentParser order)
    gradient_accumulation_steps: int = 1
    average_tokens_across_devices: bool = True
    max_grad_norm: float = 1.0
    label_smoothing_factor: float = 0.0
    bf16: bool = False
    fp16: bool = False
    bf16_full_eval: bool = False
    fp16_full_eval: bool = False
    tf32: bool | None = None
    activation_checkpointing: bool | None = _cli(None, nargs="?", const=True)
    activation_checkpointing_kwargs: dict[str, Any] | str | None = None
    gradient_checkpointing: bool | None = _cli(None, nargs="?", const=True)
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = None
    torch_compile: bool = False
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    use_liger_kernel: bool = False
    liger_kernel_config: dict[str, bool] | None = None
    use_cache: bool = False
    neftune_noise_alpha: float | None = None
    torch_empty_cache_steps: int | None = None
    auto_find_batch_size: bool = False
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    log_on_each_node: bool = True
    logging_nan_inf_filter: bool = True
    include_num_input_tokens_seen: str | bool = "no"
    log_level: str = _cli("passive", choices=tuple(LOG_LEVELS))
    log_level_replica: str = _cli("warning", choices=tuple(LOG_LEVELS))
    disable_tqdm: bool | None = None
    # The parser reads ``str | list[str]`` as a list option, which gets no default unless told.
    report_to: str | list[str] = dataclasses.field(default="all", metadata={"default": "all"})
    run_name: str | None = None
    project: str = "huggingface"
    trackio_space_id: str | None = None
    trackio_bucket_id: str | None = None
    trackio_static_space_id: str | None | Literal[False] = None  # noqa: RUF036 (as above)
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    per_device_eval_batch_size: int = 8
    prediction_loss_only: bool = False
    eval_on_start: bool = False
    eval_do_concat_batches: bool = True
    eval_use_gather_object: bool = False
    eval_accumulation_steps: int | None = None
    include_for_metrics: list[str] = dataclasses.field(default_factory=list)
    batch_eval_metrics: bool = False
    save_only_model: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_on_each_node: bool = False
    save_total_limit: int | None = None
    enable_jit_checkpoint: bool = False
    push_to_hub: bool = False
    hub_token: str | None = None
    hub_private_repo: bool | None = None
    hub_model_id: str | None = None
    hub_strategy: str = "every_save"
    hub_always_push: bool = False
    hub_revision: str | None = None
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    ignore_data_skip: bool = False
    restore_callback_states_from_checkpoint: bool = False
    full_determinism: bool = False
    seed: int = 42
    data_seed: int | None = None
    use_cpu: bool = False
    accelerator_config: dict[str, Any] | str | None = None
    parallelism_config: object = None
    dataloader_drop_last: bool = False
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    dataloader_prefetch_factor: int | None = None
    dataloader_multiprocessing_context: str | None = _cli(None, choices=START_METHODS)
    dataloader_in_order: bool = True
    remove_unused_columns: bool = True
    label_names: list[str] | None = None
    train_sampling_strategy: str = _cli("random", choices=SAMPLING_STRATEGIES)
    length_column_name: str = "length"
    ddp_find_unused_parameters: bool | None = None
    ddp_bucket_cap_mb: int | None = None
    ddp_broadcast_buffers: bool | None = None
    ddp_static_graph: bool | None = None
    ddp_backend: str | None = None
    ddp_timeout: int = 1800
    fsdp: str | None = _cli(None, nargs="?", const=True)
    fsdp_config: dict[str, Any] | str | None = None
    deepspeed: dict[str, Any] | str | None = None
    debug: str | list[str] = ""
    skip_memory_metrics: bool = True
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    resume_from_checkpoint: str | None = None
    resume_only_model: bool = False
    """Resume from a checkpoint that lacks the optimizer, scheduler or RNG files (one written
    with ``save_only_model``): load the weights and ``trainer_state.json`` only, and start the
    optimizer and learning-rate schedule afresh. Without it such a resume is an error, since the
    run would silently diverge from the one that wrote the checkpoint. Not a Hugging Face field
    (Hugging Face skips the missing files without a word); named after ``save_only_model``."""
    local_rank: int = -1

    def __post_init__(self) -> None:
        settle(self)

    def __repr__(self) -> str:
        # Arguments end up in logs and tracebacks: never show a secret there.
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"

    # --- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields for checkpoints and trackers; secrets become ``"<FIELD_NAME>"``."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # A secret is masked when set; a ``*_token`` one (``hub_token``) also when unset, as
            # transformers writes it.
            if is_secret(field.name) and (value is not None or field.name.endswith("_token")):
                value = f"<{field.name.upper()}>"
            elif isinstance(value, list | dict):
                value = json.loads(json.dumps(value, default=str))  # a copy, plain all the way
            out[field.name] = value
        return out

    def to_json_string(self) -> str:
        """The arguments as indented JSON, as Hugging Face writes ``training_args`` text."""
        return json.dumps(self.to_dict(), indent=2)

    def to_sanitized_dict(self) -> dict[str, Any]:
        """Flat scalars for hyperparameter views (TensorBoard's hparams): others as text."""
        data = {
            **self.to_dict(),
            "train_batch_size": self.train_batch_size,
            "eval_batch_size": self.eval_batch_size,
        }
        return {k: v if type(v) in _SANITIZED_TYPES else str(v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingArguments:
        """Build from a TOML/JSON table, refusing keys we do not know instead of ignoring them.

        A masked secret as ``to_dict()`` writes it (``"<HUB_TOKEN>"``) reads back as unset: the
        placeholder is never the value.
        """
        known = [field.name for field in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(
                    f"Unknown training argument {key!r}: TrainingArguments has no such field.{hint}"
                )
        values: dict[str, Any] = {
            k: None if v == f"<{str(k).upper()}>" else v for k, v in data.items()
        }
        return cls(**values)

    def set_push_to_hub(
        self,
        model_id: str,
        strategy: str = "every_save",
        token: str | None = None,
        private_repo: bool | None = None,
        always_push: bool = False,
        revision: str | None = None,
    ) -> TrainingArguments:
        """Turn pushing on and set every ``hub_*`` field at once, as transformers' method does.

        Args:
            model_id: the destination (``hub_model_id``): ``"file:///<dir>"``, an absolute
                directory, ``"models:/<name>"`` or a Hub repo id (see ``trainbus.trainer._push``).
            strategy: ``hub_strategy``: ``"end"``, ``"every_save"``, ``"checkpoint"`` or
                ``"all_checkpoints"``.
            token: ``hub_token``.
            private_repo: ``hub_private_repo``.
            always_push: ``hub_always_push``.
            revision: ``hub_revision``.

        Returns:
            These arguments, changed in place.
        """
        strategy = str(getattr(strategy, "value", strategy))
        if strategy not in HUB_STRATEGIES:
            choices = ", ".join(repr(v) for v in HUB_STRATEGIES)
            raise ConfigurationError(f"hub_strategy must be one of {choices}, got {strategy!r}.")
        self.push_to_hub = True
        self.hub_model_id = model_id
        self.hub_strategy = strategy
        self.hub_token = token
        self.hub_private_repo = private_repo
        self.hub_always_push = always_push
        self.hub_revision = revision
        return self

    # --- derived values Hugging Face callbacks read -----------------------------------------

    @property
    def n_gpu(self) -> int:
        """Devices this process drives: one CUDA device per process, or none on CPU."""
        import torch

        return 1 if torch.cuda.is_available() and not self.use_cpu else 0

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size * max(1, self.n_gpu)

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size * max(1, self.n_gpu)

    @property
    def world_size(self) -> int:
        return _world.world_size()

    @property
    def process_index(self) -> int:
        return _world.world_rank()

    @property
    def local_process_index(self) -> int:
        return _world.local_rank()

    @property
    def parallel_mode(self) -> enum.Enum:
        """``DISTRIBUTED`` under ``torchrun`` with several processes, else ``NOT_PARALLEL``.

        transformers' ``ParallelMode`` is a plain enum, equal only to its own members; a callback
        comparing with it gets transformers' member when transformers is loaded (nothing is
        imported for it), ours otherwise.
        """
        mode = ParallelMode.DISTRIBUTED if self.world_size > 1 else ParallelMode.NOT_PARALLEL
        theirs = getattr(sys.modules.get("transformers.training_args"), "ParallelMode", None)
        return getattr(theirs, mode.name, mode)

    @property
    def should_log(self) -> bool:
        """Whether this process writes logs: local zero per node, or only world zero."""
        if self.log_on_each_node:
            return self.local_process_index == 0
        return self.process_index == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints: world zero, or local zero per node."""
        if self.save_on_each_node:
            return self.local_process_index == 0
        return self.process_index == 0

    @property
    def device(self) -> torch.device:
        """The ``torch.device`` this process trains on."""
        import torch

        if self.use_cpu or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_process_index)

    @property
    def place_model_on_device(self) -> bool | None:
        """``None``: the Trainer decides (transformers' hook for integrations that place it)."""
        return None

    @property
    def ddp_timeout_delta(self) -> timedelta:
        """``ddp_timeout`` as the ``timedelta`` torch's process group takes."""
        return timedelta(seconds=self.ddp_timeout)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warm-up length in updates: ``warmup_steps`` when >= 1, else that ratio of the run."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(num_training_steps * self.warmup_steps)

    def get_process_log_level(self) -> int:
        """The ``logging`` level for this process: ``log_level`` where ``should_log``, else
        ``log_level_replica``; ``"passive"`` leaves the level trainbus's logger has."""
        level = LOG_LEVELS[self.log_level if self.should_log else self.log_level_replica]
        return logging.getLogger("trainbus").getEffectiveLevel() if level < 0 else level

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Run the block on the main process first, then on the others (a cached ``map``).

        Args:
            local: main process of each node (``True``) or of the whole job only.
            desc: what the block does; kept for transformers' signature.
        """
        del desc  # transformers only logs it
        if self.world_size <= 1:
            yield
            return
        import torch.distributed as dist

        from trainbus.trainer._distributed import Distributed

        Distributed(
            self.world_size, self.process_index, self.device, timeout=self.ddp_timeout_delta
        ).setup()
        is_main = (self.local_process_index if local else self.process_index) == 0
        if not is_main:
            dist.barrier()  # wait until the main process has done the work
        try:
            yield
        finally:
            if is_main:
                dist.barrier()  # release the others

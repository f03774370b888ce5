"""TrainingArguments: HF names and defaults, derived values, one clear error per bad value."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import ParallelMode, TrainingArguments
from trainbus.trainer._support import DEFAULT_EXCEPTIONS, FIELDS


def test_defaults_follow_hugging_face() -> None:
    """The defaults a user's HF callbacks read are Hugging Face's, except report_to = 'all'."""
    args = TrainingArguments(disable_tqdm=False)
    assert (args.num_train_epochs, args.max_steps, args.learning_rate) == (3.0, -1, 5e-5)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (8, 8)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert (args.max_grad_norm, args.weight_decay, args.seed) == (1.0, 0.0, 42)
    assert (args.logging_strategy, args.logging_steps) == ("steps", 500)
    assert (args.eval_strategy, args.eval_steps) == ("no", None)
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 500, None)
    assert args.lr_scheduler_type == "linear" and args.warmup_steps == 0
    assert args.metric_for_best_model is None and args.greater_is_better is None
    assert args.report_to == "all"
    assert not args.restore_callback_states_from_checkpoint


def test_eval_steps_default_to_logging_steps() -> None:
    """With the 'steps' eval strategy and no eval_steps, eval_steps copies logging_steps."""
    args = TrainingArguments(eval_strategy="steps", logging_steps=25)
    assert args.eval_steps == 25 and args.do_eval


def test_best_model_defaults_metric_and_direction() -> None:
    """load_best_model_at_end defaults the metric to 'loss' and greater_is_better from its name."""
    args = TrainingArguments(
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True
    )
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)
    accuracy = TrainingArguments(metric_for_best_model="accuracy")
    assert accuracy.greater_is_better is True
    explicit = TrainingArguments(metric_for_best_model="accuracy", greater_is_better=False)
    assert explicit.greater_is_better is False


def test_whole_float_steps_become_integers() -> None:
    """An interval like 20.0 is stored as the integer 20; ratios below 1 stay floats."""
    args = TrainingArguments(logging_steps=20.0, save_steps=0.1, eval_strategy="steps")
    assert args.logging_steps == 20 and isinstance(args.logging_steps, int)
    assert args.save_steps == 0.1 and args.eval_steps == 20


def test_warmup_steps_or_ratio() -> None:
    """get_warmup_steps takes whole steps as they are and a ratio below 1 with ceil."""
    assert TrainingArguments(warmup_steps=7).get_warmup_steps(100) == 7
    assert TrainingArguments(warmup_steps=0.05).get_warmup_steps(110) == 6
    with pytest.warns(FutureWarning):
        legacy = TrainingArguments(warmup_ratio=0.1)
    assert legacy.get_warmup_steps(95) == 10
    # Folded into warmup_steps, so a copy (from_dict, dataclasses.replace) does not set both.
    assert (legacy.warmup_steps, legacy.warmup_ratio) == (0.1, None)
    assert TrainingArguments.from_dict(legacy.to_dict()) == legacy


def test_to_dict_is_json_ready_and_redacts_secrets() -> None:
    """to_dict/to_json_string hold every field and hide any field named like a secret."""
    args = TrainingArguments(hub_token="hf_abc", report_to=["tensorboard"])
    data = json.loads(args.to_json_string())
    assert data["hub_token"] == "<HUB_TOKEN>"
    assert "hf_abc" not in args.to_json_string()
    assert "hf_abc" not in repr(args) and "hub_token='<HUB_TOKEN>'" in repr(args)
    assert data["report_to"] == ["tensorboard"]
    assert set(data) == set(args.to_dict())
    # Unset, as transformers writes it; and the placeholder reads back as unset.
    assert TrainingArguments().to_dict()["hub_token"] == "<HUB_TOKEN>"
    assert TrainingArguments.from_dict(TrainingArguments().to_dict()).hub_token is None
    assert data["include_num_input_tokens_seen"] == "no"  # "tokens" is not a secret


def test_secret_detection_covers_fields_of_subclasses() -> None:
    """Fields named with key, password or secret words are redacted too."""

    @dataclasses.dataclass
    class Extended(TrainingArguments):
        comet_api_key: str | None = None
        db_password: str | None = None

    data = Extended(comet_api_key="abc", db_password="pw").to_dict()
    assert (data["comet_api_key"], data["db_password"]) == ("<COMET_API_KEY>", "<DB_PASSWORD>")


def test_from_dict_round_trips_and_names_unknown_keys() -> None:
    """from_dict rebuilds equal arguments and rejects an unknown key, suggesting the close one."""
    args = TrainingArguments(eval_strategy="steps", eval_steps=10, report_to="none")
    assert TrainingArguments.from_dict(args.to_dict()) == args
    with pytest.raises(ConfigurationError, match=r"'learnig_rate'.*'learning_rate'"):
        TrainingArguments.from_dict({"learnig_rate": 1e-3})


def test_field_names_and_defaults_match_transformers() -> None:
    """Every field but two of ours exists in transformers with the same default, bar three."""
    transformers = pytest.importorskip("transformers")
    theirs = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}
    differing = {}
    # warmup_ratio: kept for old configs, v5 folds it into warmup_steps; resume_only_model: the
    # explicit way to resume from a checkpoint without optimizer, scheduler or RNG files.
    for field in dataclasses.fields(TrainingArguments):
        if field.name in ("warmup_ratio", "resume_only_model"):
            assert field.name not in theirs
            continue
        their_default = theirs[field.name].default
        if their_default != field.default:
            differing[field.name] = (field.default, their_default)
    # output_dir: theirs is None, which their __post_init__ turns into "trainer_output".
    assert differing == {"output_dir": ("trainer_output", None), "report_to": ("all", "none")}
    assert TrainingArguments(include_num_input_tokens_seen=True).include_num_input_tokens_seen == (
        "all"
    )


def test_strategy_enums_from_transformers_are_accepted() -> None:
    """transformers' str enums (IntervalStrategy) are stored as their plain string values."""
    transformers = pytest.importorskip("transformers")
    args = TrainingArguments(
        eval_strategy=transformers.IntervalStrategy.STEPS,
        save_strategy=transformers.trainer_utils.SaveStrategy.STEPS,
        eval_steps=5,
        save_steps=10,
    )
    assert args.eval_strategy == "steps" and type(args.eval_strategy) is str
    assert args.save_strategy == "steps"


def test_process_properties_read_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a process group, world size and ranks come from WORLD_SIZE/RANK/LOCAL_RANK."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = TrainingArguments(use_cpu=True, per_device_train_batch_size=4)
    assert (args.world_size, args.process_index, args.local_process_index) == (4, 3, 1)
    assert not args.should_save and not args.should_log
    assert TrainingArguments(log_on_each_node=False).should_log is False
    assert args.train_batch_size == 4 and str(args.device) == "cpu"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert args.should_save and args.should_log


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"logging_strategy": "sometimes"}, r"logging_strategy must be one of 'no', 'steps', 'epoch'"),
    ({"eval_strategy": "step"}, r"eval_strategy must be one of"),
    ({"save_strategy": "always"}, r"save_strategy must be one of 'no', 'steps', 'epoch', 'best'"),
    ({"lr_scheduler_type": "cosine_restarts"}, r"lr_scheduler_type must be one of"),
    ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be an integer >= 1"),
    ({"per_device_train_batch_size": -2}, r"per_device_train_batch_size must be an integer >= 1"),
    ({"max_steps": 0}, r"max_steps must be a positive number .* or -1"),
    ({"max_steps": -5}, r"max_steps must be a positive"),
    ({"num_train_epochs": -1}, r"num_train_epochs must be a finite number >= 0"),
    ({"logging_steps": 0}, r"logging_steps must be > 0 with the 'steps' strategy"),
    ({"logging_steps": -10}, r"logging_steps must be a finite number >= 0"),
    ({"save_steps": 0}, r"save_steps must be > 0 with the 'steps' strategy"),
    ({"save_steps": 10.5}, r"save_steps must be a whole number when above 1"),
    ({"eval_strategy": "steps", "eval_steps": -3}, r"eval_steps must be a (finite )?number >= 0"),
    (
        {"eval_strategy": "steps", "logging_strategy": "no", "logging_steps": 0},
        r"eval_strategy 'steps' needs a non-zero eval_steps",
    ),
    ({"warmup_steps": -1}, r"warmup_steps must be a finite number >= 0"),
    ({"learning_rate": -1e-3}, r"learning_rate must be a finite number >= 0"),
    ({"learning_rate": math.inf}, r"learning_rate must be a finite number >= 0, got inf"),
    ({"learning_rate": math.nan}, r"learning_rate must be a finite number >= 0, got nan"),
    ({"num_train_epochs": math.nan}, r"num_train_epochs must be a finite number >= 0, got nan"),
    ({"num_train_epochs": math.inf}, r"num_train_epochs must be a finite number >= 0, got inf"),
    ({"max_grad_norm": math.inf}, r"max_grad_norm must be a finite number >= 0, got inf"),
    ({"weight_decay": math.nan}, r"weight_decay must be a finite number >= 0, got nan"),
    ({"logging_steps": math.inf}, r"logging_steps must be a finite number >= 0, got inf"),
    ({"eval_delay": math.inf}, r"eval_delay must be a finite number >= 0, got inf"),
    ({"warmup_steps": math.nan}, r"warmup_steps must be a finite number >= 0, got nan"),
    ({"resume_only_model": "yes"}, r"resume_only_model must be true or false, got 'yes'"),
    ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\)"),
    ({"save_total_limit": 0}, r"save_total_limit must be an integer >= 1"),
    (
        {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
        r"load_best_model_at_end needs save_strategy to equal eval_strategy",
    ),
    (
        {"load_best_model_at_end": True, "eval_strategy": "no", "save_strategy": "no"},
        r"load_best_model_at_end needs evaluations",
    ),
    (
        {
            "load_best_model_at_end": True,
            "eval_strategy": "steps",
            "eval_steps": 30,
            "save_steps": 50,
        },
        r"save_steps to be a multiple of eval_steps, got save_steps=50 and eval_steps=30",
    ),
    (
        {
            "load_best_model_at_end": True,
            "eval_strategy": "steps",
            "eval_steps": 0.1,
            "save_steps": 50,
        },
        r"when one is a ratio and the other is not",
    ),
    ({"save_strategy": "best"}, r"save_strategy 'best' saves after evaluations"),
    ({"report_to": None}, r"report_to must be 'all', 'none'"),
    ({"include_num_input_tokens_seen": "some"}, r"include_num_input_tokens_seen must be one of"),
    ({"logging_first_step": "false"}, r"logging_first_step must be true or false, got 'false'"),
    ({"greater_is_better": 1}, r"greater_is_better must be true or false"),
    ({"output_dir": ""}, r"output_dir must be a non-empty path"),
    ({"report_to": ["mlflow", 3]}, r"report_to must be"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_INPUTS)
def test_bad_input_raises_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    """Each bad value raises a ConfigurationError (a ValueError) naming the field."""
    with pytest.raises(ConfigurationError, match=message) as info:
        TrainingArguments(**kwargs)
    assert isinstance(info.value, ValueError)


def test_valid_best_model_combinations() -> None:
    """Matching strategies, multiple steps, ratio pairs and save_strategy='best' are accepted."""
    TrainingArguments(load_best_model_at_end=True, eval_strategy="steps", eval_steps=25)
    TrainingArguments(
        load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1, save_steps=0.3
    )
    best = TrainingArguments(
        load_best_model_at_end=True, eval_strategy="epoch", save_strategy="best"
    )
    assert best.metric_for_best_model == "loss"


# --- against the installed transformers -------------------------------------------------------

TO_DICT_EXCEPTIONS = {
    # report_to: our default is "all", kept raw (transformers resolves "none" to []).
    "report_to": ("all", []),
    # Refused (no Accelerate): transformers turns None into Accelerate's defaults.
    "accelerator_config": (
        None,
        {
            "split_batches": False,
            "dispatch_batches": None,
            "even_batches": True,
            "use_seedable_sampler": True,
            "non_blocking": False,
            "gradient_accumulation_kwargs": None,
        },
    ),
}
"""The documented differences of ``to_dict()`` with default arguments (docs/compatibility.md)."""


def _both(**kwargs: Any) -> tuple[Any, TrainingArguments]:
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return transformers.TrainingArguments(**kwargs), TrainingArguments(**kwargs)


def _differences(theirs: Any, ours: TrainingArguments) -> dict[str, tuple[Any, Any]]:
    """Fields whose ``to_dict()`` values differ, as (ours, theirs)."""
    mine, their = ours.to_dict(), theirs.to_dict()
    assert set(mine) - set(their) == {"warmup_ratio", "resume_only_model"}
    return {k: (mine[k], v) for k, v in their.items() if mine[k] != v}


def test_default_arguments_equal_transformers() -> None:
    """With no arguments, every field and derived value is transformers', bar the documented."""
    theirs, ours = _both()
    assert _differences(theirs, ours) == TO_DICT_EXCEPTIONS
    assert ours.output_dir == theirs.output_dir == "trainer_output"
    for name in (
        "train_batch_size",
        "eval_batch_size",
        "n_gpu",
        "world_size",
        "process_index",
        "local_process_index",
        "should_log",
        "should_save",
        "parallel_mode",
        "place_model_on_device",
        "ddp_timeout_delta",
        "device",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.get_process_log_level() == theirs.get_process_log_level()
    assert [ours.get_warmup_steps(n) for n in (0, 7, 100)] == [
        theirs.get_warmup_steps(n) for n in (0, 7, 100)
    ]
    assert set(ours.to_sanitized_dict()) - set(theirs.to_sanitized_dict()) == {
        "warmup_ratio",
        "resume_only_model",
    }


def test_defaults_declared_in_the_table_are_transformers_own() -> None:
    """The table's "transformers default" column (ours, or DEFAULT_EXCEPTIONS) is transformers'."""
    transformers = pytest.importorskip("transformers")
    theirs = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}
    ours = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    for name in FIELDS:
        mine = DEFAULT_EXCEPTIONS.get(name, ours[name].default)
        assert mine == theirs[name].default, name
    assert ours["include_for_metrics"].default_factory() == []  # type: ignore[misc]


DERIVED_CASES: list[dict[str, Any]] = [
    {"eval_strategy": "steps", "logging_steps": 25},
    {"eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True},
    {"metric_for_best_model": "accuracy", "eval_strategy": "steps", "eval_steps": 0.25},
    {"lr_scheduler_type": "reduce_lr_on_plateau", "eval_strategy": "epoch"},
    {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": '{"use_reentrant": false}'},
    {"activation_checkpointing": True, "gradient_checkpointing": False},
    {"torch_compile_mode": "reduce-overhead", "use_cpu": True},
    {"use_cpu": True, "dataloader_num_workers": 2, "dataloader_prefetch_factor": 4},
    {"include_num_input_tokens_seen": True, "include_for_metrics": ["inputs", "loss"]},
    {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": '{"min_lr": 1e-6}'},
    {"warmup_steps": 0.1, "logging_steps": 20.0, "save_steps": 40.0, "output_dir": "~/runs/x"},
    {"optim": "sgd", "seed": 7, "data_seed": 3, "label_names": ["y"], "full_determinism": True},
    {"fsdp": "", "debug": ""},
]


@pytest.mark.parametrize("kwargs", DERIVED_CASES)
def test_derived_values_equal_transformers(kwargs: dict[str, Any]) -> None:
    """What __post_init__ derives (eval_steps, metric, aliases, compile backend ...) matches."""
    theirs, ours = _both(**kwargs)
    assert _differences(theirs, ours) == TO_DICT_EXCEPTIONS


SAME_FAILURES: list[tuple[dict[str, Any], str]] = [
    ({"fp16": True, "bf16": True, "use_cpu": True}, "fp16 and bf16"),
    ({"fp16_full_eval": True, "bf16_full_eval": True, "use_cpu": True}, "fp16_full_eval"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"}, "load"),
    (
        {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 30},
        "save_steps to be a multiple of eval_steps",
    ),
    (
        {"lr_scheduler_type": "reduce_lr_on_plateau"},
        "lr_scheduler_type='reduce_lr_on_plateau' steps on an evaluation",
    ),
    ({"lr_scheduler_type": "greedy"}, "lr_scheduler_type='greedy' steps on an evaluation"),
    ({"eval_strategy": "step"}, "eval_strategy must be one of"),
    ({"save_strategy": "always"}, "save_strategy must be one of"),
    ({"logging_strategy": "often"}, "logging_strategy must be one of"),
    ({"lr_scheduler_type": "cosine_restarts"}, "lr_scheduler_type must be one of"),
    ({"optim": "adam"}, "optim must be one of"),
    ({"hub_strategy": "never"}, "hub_strategy must be one of"),
    ({"logging_steps": 0}, "logging_steps must be > 0"),
    ({"save_steps": 10.5}, "save_steps must be a whole number"),
    ({"eval_strategy": "steps", "eval_steps": 7.5}, "eval_steps must be a whole number"),
    (
        {"eval_strategy": "steps", "logging_strategy": "no", "logging_steps": 0},
        "eval_strategy 'steps' needs a non-zero eval_steps",
    ),
    ({"warmup_steps": -1}, "warmup_steps must be a finite number >= 0"),
    ({"dataloader_prefetch_factor": 2}, "dataloader_prefetch_factor applies to worker"),
    ({"torch_empty_cache_steps": 0}, "torch_empty_cache_steps"),
]


@pytest.mark.parametrize(("kwargs", "message"), SAME_FAILURES)
def test_transformers_refusals_are_ours(kwargs: dict[str, Any], message: str) -> None:
    """Inputs transformers refuses are refused here too, with one line naming the field."""
    transformers = pytest.importorskip("transformers")
    with pytest.raises(ValueError):
        transformers.TrainingArguments(**kwargs)
    with pytest.raises(ConfigurationError, match=message) as info:
        TrainingArguments(**kwargs)
    assert "\n" not in str(info.value)


def test_bf16_and_tf32_need_the_hardware_transformers_asks_for() -> None:
    """bf16 without bfloat16 hardware (and without use_cpu) or tf32 without Ampere is refused."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    utils = transformers.utils.import_utils
    if not utils.is_torch_bf16_gpu_available():
        with pytest.raises(ValueError):
            transformers.TrainingArguments(bf16=True)
        with pytest.raises(ConfigurationError, match=r"bf16=True needs a GPU .* use_cpu=True"):
            TrainingArguments(bf16=True)
    assert TrainingArguments(bf16=True, use_cpu=True).bf16
    if not utils.is_torch_tf32_available():
        with pytest.raises(ValueError):
            transformers.TrainingArguments(tf32=True)
        with pytest.raises(ConfigurationError, match=r"tf32=True needs an Ampere"):
            TrainingArguments(tf32=True)
    assert TrainingArguments(tf32=False).tf32 is False
    assert torch.cuda.is_available() or TrainingArguments(bf16_full_eval=True, use_cpu=True)


def test_transformers_string_enums_are_accepted_as_plain_strings() -> None:
    """Every transformers str-enum field takes its enum members and stores their values."""
    transformers = pytest.importorskip("transformers")
    utils = transformers.trainer_utils
    args = TrainingArguments(
        lr_scheduler_type=utils.SchedulerType.COSINE_WITH_RESTARTS,
        optim=transformers.training_args.OptimizerNames.ADAFACTOR,
        hub_strategy=utils.HubStrategy.END,
        logging_strategy=utils.IntervalStrategy.EPOCH,
    )
    assert (args.lr_scheduler_type, args.optim, args.hub_strategy) == (
        "cosine_with_restarts",
        "adafactor",
        "end",
    )
    assert args.logging_strategy == utils.IntervalStrategy.EPOCH  # equal both ways
    assert type(args.optim) is str


def test_parallel_mode_compares_equal_to_transformers_member() -> None:
    """A callback comparing args.parallel_mode with transformers' ParallelMode gets equality."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.training_args.ParallelMode
    assert TrainingArguments().parallel_mode == theirs.NOT_PARALLEL
    assert [m.value for m in ParallelMode] == [m.value for m in theirs]


def test_scripts_parse_their_command_line_as_with_transformers() -> None:
    """HfArgumentParser reads our dataclass from the same argv into the same values."""
    transformers = pytest.importorskip("transformers")
    argv = [
        "--output_dir=out",
        "--learning_rate=1e-3",
        "--eval_strategy=steps",
        "--eval_steps=5",
        "--bf16",
        "--use_cpu",
        "--gradient_checkpointing",
        "--lr_scheduler_type=cosine_with_restarts",
        '--lr_scheduler_kwargs={"num_cycles": 2}',
        "--include_for_metrics",
        "inputs",
        "loss",
        "--label_names=labels",
        "--optim=sgd",
        "--include_num_input_tokens_seen=true",
        "--no_remove_unused_columns",
        "--tf32=false",
        "--log_level=info",
        "--fsdp=",
    ]
    parsed = []
    for cls in (transformers.TrainingArguments, TrainingArguments):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            (args,) = transformers.HfArgumentParser(cls).parse_args_into_dataclasses(argv)
        parsed.append(args)
    assert _differences(*parsed) == TO_DICT_EXCEPTIONS
    # The parser rewrote the dataclass fields' types in place; our checks do not depend on them.
    assert TrainingArguments(include_num_input_tokens_seen="all").include_num_input_tokens_seen
    with pytest.raises(ConfigurationError, match=r"bf16 must be true or false, got 'true'"):
        TrainingArguments(bf16="true")


# --- new fields: checks and derived values -----------------------------------------------------


def test_dict_fields_take_json_text_and_name_bad_text() -> None:
    """lr_scheduler_kwargs (and the checkpointing kwargs) parse JSON text; bad text is named."""
    restarts = "cosine_with_restarts"
    args = TrainingArguments(lr_scheduler_type=restarts, lr_scheduler_kwargs='{"num_cycles": 3}')
    assert args.lr_scheduler_kwargs == {"num_cycles": 3}
    with pytest.raises(ConfigurationError, match=r"lr_scheduler_kwargs is not valid JSON"):
        TrainingArguments(lr_scheduler_type=restarts, lr_scheduler_kwargs="{num_cycles: 3}")
    with pytest.raises(ConfigurationError, match=r"activation_checkpointing_kwargs must be a dict"):
        TrainingArguments(activation_checkpointing_kwargs="use_reentrant")


def test_gradient_checkpointing_mirrors_activation_checkpointing() -> None:
    """The deprecated names warn, feed the new ones, and then read the same value."""
    with pytest.warns(FutureWarning, match="gradient_checkpointing is deprecated"):
        old = TrainingArguments(gradient_checkpointing=True)
    assert old.activation_checkpointing is True and old.gradient_checkpointing is True
    new = TrainingArguments(activation_checkpointing=True, activation_checkpointing_kwargs={})
    assert (new.gradient_checkpointing, new.gradient_checkpointing_kwargs) == (True, {})
    assert TrainingArguments().gradient_checkpointing is False
    assert TrainingArguments.from_dict(old.to_dict()) == old


def test_process_log_level_follows_log_level_and_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_process_log_level: log_level where should_log, log_level_replica elsewhere."""
    args = TrainingArguments(log_level="info", log_level_replica="error")
    assert args.get_process_log_level() == logging.INFO
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert args.get_process_log_level() == logging.ERROR
    with pytest.raises(ConfigurationError, match=r"log_level must be one of .*'passive'"):
        TrainingArguments(log_level="loud")


def test_to_sanitized_dict_holds_scalars_only() -> None:
    """Hyperparameter views get scalars: lists and None as text, batch sizes added."""
    data = TrainingArguments(label_names=["y"], use_cpu=True).to_sanitized_dict()
    assert data["label_names"] == "['y']" and data["eval_steps"] == "None"
    assert data["train_batch_size"] == 8
    assert all(type(value) in (bool, int, float, str) for value in data.values())


def test_main_process_first_runs_the_block_alone() -> None:
    """In a single process main_process_first just runs the block."""
    ran = []
    with TrainingArguments().main_process_first(desc="tokenize"):
        ran.append(True)
    assert ran == [True]


NEW_BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"eval_accumulation_steps": 0}, r"eval_accumulation_steps must be an integer >= 1 or None"),
    ({"data_seed": -1}, r"data_seed must be an integer >= 0 or None"),
    ({"include_for_metrics": ["logits"]}, r"include_for_metrics entry must be one of 'inputs'"),
    ({"label_names": "labels"}, r"label_names must be a list of strings"),
    ({"train_sampling_strategy": "shuffled"}, r"train_sampling_strategy must be one of"),
    ({"dataloader_multiprocessing_context": "thread"}, r"dataloader_multiprocessing_context"),
    ({"optim_args": 3}, r"optim_args must be a string or None"),
    ({"torch_compile": "yes"}, r"torch_compile must be true or false"),
    ({"average_tokens_across_devices": None}, r"average_tokens_across_devices must be true"),
]


@pytest.mark.parametrize(("kwargs", "message"), NEW_BAD_INPUTS)
def test_new_fields_refuse_bad_values(kwargs: dict[str, Any], message: str) -> None:
    """The fields added for transformers 5 parity name themselves when given a bad value."""
    with pytest.raises(ConfigurationError, match=message):
        TrainingArguments(**kwargs)


# --- refused fields ---------------------------------------------------------------------------

REFUSED_SAMPLES: dict[str, Any] = {
    "optim_target_modules": ["attn"],
    "label_smoothing_factor": 0.1,
    "use_liger_kernel": True,
    "liger_kernel_config": {"rope": True},
    "neftune_noise_alpha": 5.0,
    "torch_empty_cache_steps": 10,
    "auto_find_batch_size": True,
    "trackio_space_id": "me/space",
    "trackio_bucket_id": "me/bucket",
    "trackio_static_space_id": False,
    "eval_use_gather_object": True,
    "enable_jit_checkpoint": True,
    "ignore_data_skip": True,
    "accelerator_config": {"split_batches": True},
    "parallelism_config": object(),
    "ddp_find_unused_parameters": False,
    "ddp_bucket_cap_mb": 25,
    "ddp_broadcast_buffers": False,
    "ddp_static_graph": True,
    "ddp_backend": "gloo",
    "fsdp": "full_shard",
    "fsdp_config": {"min_num_params": 1},
    "deepspeed": "ds_config.json",
    "debug": "underflow_overflow",
    "skip_memory_metrics": False,
}
"""A non-default value for every field the registry refuses."""


def test_every_refused_field_has_a_sample() -> None:
    """REFUSED_SAMPLES covers exactly the refused fields, so each is tested below."""
    refused = {name for name, support in FIELDS.items() if support.status == "refused"}
    assert set(REFUSED_SAMPLES) == refused


@pytest.mark.parametrize(("name", "value"), REFUSED_SAMPLES.items(), ids=list(REFUSED_SAMPLES))
def test_refused_field_raises_one_line_naming_it(name: str, value: Any) -> None:
    """A refused field set away from its default raises one line naming it and the table."""
    with pytest.raises(ConfigurationError) as info:
        TrainingArguments(**{name: value})
    message = str(info.value)
    assert message.startswith(
        f"{name} is not supported by trainbus yet; see docs/compatibility.md (got {value!r}"
    )
    assert "\n" not in message and isinstance(info.value, ValueError)


def test_refused_fields_at_their_default_are_accepted() -> None:
    """Passing a refused field's default (or, for fsdp/debug, an empty value) is fine."""
    args = TrainingArguments(ddp_timeout=1800, skip_memory_metrics=True, fsdp="", debug=[])
    assert args.debug == [] and args.fsdp == ""


def test_push_to_hub_is_accepted_with_its_destination() -> None:
    """push_to_hub=True is an argument like any other (the Trainer checks the destination)."""
    args = TrainingArguments(push_to_hub=True, hub_model_id="models:/digits")
    assert args.push_to_hub and args.hub_model_id == "models:/digits"


def test_optimizers_beyond_torch_are_refused_naming_the_value() -> None:
    """A transformers optimizer name trainbus does not build is refused naming it."""
    for name in ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"):
        assert TrainingArguments(optim=name).optim == name
    with pytest.raises(ConfigurationError) as info:
        TrainingArguments(optim="adamw_bnb_8bit")
    assert str(info.value).startswith(
        "optim='adamw_bnb_8bit' is not supported by trainbus yet; see docs/compatibility.md "
        "(supported: 'adamw_torch_fused'"
    )


# --- a whole script, both Trainers --------------------------------------------------------------


def test_a_command_line_script_trains_the_same_on_both_trainers(tmp_path: Path) -> None:
    """HfArgumentParser + main_process_first + get_process_log_level: same arguments, same run."""
    pytest.importorskip("transformers")
    from tests.support.hf_differential import run_script

    argv = [
        f"--output_dir={tmp_path / 'out'}",
        "--learning_rate=1e-3",
        "--per_device_train_batch_size=8",
        "--gradient_accumulation_steps=1",
        "--num_train_epochs=2",
        "--lr_scheduler_type=cosine",
        "--warmup_steps=0.25",
        "--logging_steps=1",
        "--eval_strategy=steps",
        "--eval_steps=2",
        "--save_strategy=no",
        "--seed=3",
        "--use_cpu",
        "--disable_tqdm=true",
        "--log_level=info",
        "--report_to=none",
    ]
    theirs = run_script("cli_arguments", "transformers", tmp_path / "hf", ARGV=argv)
    ours = run_script("cli_arguments", "trainbus", tmp_path / "tb", ARGV=argv)
    assert ours["global_step"] == theirs["global_step"] == 12
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["eval_losses"] == pytest.approx(theirs["eval_losses"], rel=1e-5)
    assert ours["learning_rates"] == pytest.approx(theirs["learning_rates"], rel=1e-5)
    mine, their = ours["arguments"], theirs["arguments"]
    differing = {k: (mine[k], v) for k, v in their.items() if mine[k] != v}
    assert differing == {k: TO_DICT_EXCEPTIONS[k] for k in ("accelerator_config",)}
    assert ours["log_level"] == theirs["log_level"] == logging.INFO


def test_save_on_each_node_lets_every_nodes_first_process_save(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 2 of 4, first on its node: saves only with ``save_on_each_node``, as in
    transformers; rank 0 always saves, and a second process on a node never does."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert TrainingArguments().should_save is False
    assert TrainingArguments(save_on_each_node=True).should_save is True
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert TrainingArguments(save_on_each_node=True).should_save is False
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert TrainingArguments().should_save is True

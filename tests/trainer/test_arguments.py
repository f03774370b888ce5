"""TrainingArguments: HF names and defaults, derived values, one clear error per bad value."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import TrainingArguments


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


def test_to_dict_is_json_ready_and_redacts_secrets() -> None:
    """to_dict/to_json_string hold every field and hide any field named like a secret."""
    args = TrainingArguments(hub_token="hf_abc", report_to=["tensorboard"])
    data = json.loads(args.to_json_string())
    assert data["hub_token"] == "<HUB_TOKEN>"
    assert "hf_abc" not in args.to_json_string()
    assert "hf_abc" not in repr(args) and "hub_token='<HUB_TOKEN>'" in repr(args)
    assert data["report_to"] == ["tensorboard"]
    assert set(data) == set(args.to_dict())
    assert TrainingArguments().to_dict()["hub_token"] is None
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

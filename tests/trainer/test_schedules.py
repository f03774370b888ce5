"""Learning-rate schedules: every ``lr_scheduler_type`` gives transformers' rates, step by step."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from tests.support.hf_differential import run_script
from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import Trainer, TrainingArguments
from trainbus.trainer._optim_arguments import (
    _GREEDY_KEYS,
    _PLATEAU_KEYS,
    METRIC_SCHEDULERS,
    SCHEDULER_TYPES,
)
from trainbus.trainer._schedules import create_scheduler

transformers = pytest.importorskip("transformers")

_cycles = st.floats(0.1, 4.0, allow_nan=False)
_rate = st.floats(0.0, 0.9, allow_nan=False)
_shape = st.sampled_from(["linear", "cosine", "1-sqrt"])
_steps = st.integers(0, 40)

KWARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "linear": st.just({}),
    "cosine": st.fixed_dictionaries({}, optional={"num_cycles": _cycles}),
    "cosine_with_restarts": st.fixed_dictionaries(
        {}, optional={"num_cycles": st.integers(1, 5) | _cycles}
    ),
    "polynomial": st.fixed_dictionaries(
        {},
        optional={"lr_end": st.floats(0.0, 0.009, allow_nan=False), "power": st.floats(0.5, 3.0)},
    ),
    "constant": st.just({}),
    "constant_with_warmup": st.just({}),
    "inverse_sqrt": st.fixed_dictionaries({}, optional={"timescale": st.integers(1, 50)}),
    "cosine_with_min_lr": st.one_of(
        st.fixed_dictionaries({"min_lr_rate": _rate}, optional={"num_cycles": _cycles}),
        st.fixed_dictionaries({"min_lr": st.floats(0.0, 0.009)}, optional={"num_cycles": _cycles}),
    ),
    "cosine_warmup_with_min_lr": st.one_of(
        st.fixed_dictionaries(
            {"min_lr_rate": _rate}, optional={"num_cycles": _cycles, "warmup_lr_rate": _rate}
        ),
        st.fixed_dictionaries({"min_lr": st.floats(0.0, 0.009)}, optional={"num_cycles": _cycles}),
    ),
    "warmup_stable_decay": st.fixed_dictionaries(
        {"num_decay_steps": _steps},
        optional={
            "num_stable_steps": _steps,
            "warmup_type": _shape,
            "decay_type": _shape,
            "min_lr_ratio": _rate,
            "num_cycles": _cycles,
        },
    ),
}
"""Each step-driven schedule's ``lr_scheduler_kwargs``, drawn over their meaningful ranges."""


def _rates(scheduler: Any, optimizer: torch.optim.Optimizer, steps: int) -> list[list[float]]:
    """Every group's rate before each update, as the loop reads them, and after the last."""
    rates = []
    for _ in range(steps):
        rates.append([float(group["lr"]) for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    rates.append([float(group["lr"]) for group in optimizer.param_groups])
    return rates


def _optimizer(lr: float) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": lr / 3}], lr=lr)


@pytest.mark.parametrize("name", sorted(KWARGS))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), warmup=st.integers(0, 12), total=st.integers(1, 40))
def test_rates_equal_transformers_get_scheduler(
    name: str, data: st.DataObject, warmup: int, total: int
) -> None:
    """Our formulas give transformers' rate for every update and group, to 1e-12."""
    kwargs = data.draw(KWARGS[name], label="lr_scheduler_kwargs")
    if name == "polynomial" and warmup == total:
        warmup = total + 1  # transformers divides by zero at the last step there
    lr = 0.01
    ours_optimizer, theirs_optimizer = _optimizer(lr), _optimizer(lr)
    ours = create_scheduler(
        name,
        ours_optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total,
        scheduler_kwargs=dict(kwargs),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warmup_stable_decay's "both steps given" notice
        theirs = transformers.get_scheduler(
            name,
            theirs_optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total,
            scheduler_specific_kwargs=dict(kwargs),
        )
    expected = _rates(theirs, theirs_optimizer, total + 2)
    got = _rates(ours, ours_optimizer, total + 2)
    for step, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        assert all(
            math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
            for a, b in zip(mine, reference, strict=True)
        ), f"step {step}: {mine} != {reference}"


def test_every_transformers_schedule_has_a_name_here() -> None:
    """Our names are transformers' ``SchedulerType`` values, all of them: none missing."""
    assert set(SCHEDULER_TYPES) == {member.value for member in transformers.SchedulerType}
    assert set(SCHEDULER_TYPES) - set(METRIC_SCHEDULERS) == set(KWARGS)


def test_metric_schedulers_take_exactly_their_classes_settings() -> None:
    """The keys accepted for plateau and greedy schedules are their constructors' parameters."""
    for cls, keys in [(ReduceLROnPlateau, _PLATEAU_KEYS), (transformers.GreedyLR, _GREEDY_KEYS)]:
        parameters = set(inspect.signature(cls.__init__).parameters) - {"self", "optimizer"}
        assert set(keys) == parameters


def test_metric_schedulers_are_torch_and_transformers_classes() -> None:
    """``reduce_lr_on_plateau`` and ``greedy`` build the classes transformers builds."""
    optimizer = _optimizer(0.1)
    plateau = create_scheduler(
        "reduce_lr_on_plateau",
        optimizer,
        num_warmup_steps=0,
        num_training_steps=5,
        scheduler_kwargs={"factor": 0.5, "patience": 2},
    )
    assert isinstance(plateau, ReduceLROnPlateau)
    assert (plateau.factor, plateau.patience) == (0.5, 2)
    greedy = create_scheduler(
        "greedy", optimizer, num_warmup_steps=0, num_training_steps=5, scheduler_kwargs=None
    )
    assert isinstance(greedy, transformers.GreedyLR)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr_scheduler_kwargs": {"num_cycle": 2}}, r"key 'num_cycle' is not taken.*num_cycles"),
        (
            {"lr_scheduler_type": "linear", "lr_scheduler_kwargs": {"power": 2}},
            r"'power' is not taken by lr_scheduler_type='linear' \(it takes no keys\)",
        ),
        ({"lr_scheduler_kwargs": {"num_cycles": "two"}}, r"\['num_cycles'\] must be a finite"),
        ({"lr_scheduler_kwargs": "cycles=2"}, r"must be a dict or a JSON object string"),
        ({"lr_scheduler_kwargs": "{num_cycles: 2}"}, r"lr_scheduler_kwargs is not valid JSON"),
        (
            {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {}},
            r"needs lr_scheduler_kwargs\['num_decay_steps'\]",
        ),
        (
            {
                "lr_scheduler_type": "warmup_stable_decay",
                "lr_scheduler_kwargs": {"num_decay_steps": 2, "decay_type": "cubic"},
            },
            r"\['decay_type'\] must be one of 'linear', 'cosine', '1-sqrt'",
        ),
        (
            {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {}},
            r"exactly one of lr_scheduler_kwargs\['min_lr'\].*got neither",
        ),
        (
            {"lr_scheduler_type": "reduce_lr_on_plateau", "eval_strategy": "no"},
            r"steps on an evaluation metric, so eval_strategy must be",
        ),
        ({"lr_scheduler_type": "exponential"}, r"lr_scheduler_type must be one of 'linear'"),
    ],
)
def test_bad_schedule_arguments_are_refused_when_built(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    """A key the schedule does not take, a missing one, a bad value: one line, before training."""
    fields = {"lr_scheduler_type": "cosine", **fields}
    with pytest.raises(ConfigurationError, match=message):
        TrainingArguments(output_dir=str(tmp_path), **fields)


def test_a_json_string_is_read_as_transformers_reads_it(tmp_path: Path) -> None:
    """A command line's JSON string becomes the dict, quoted numbers and booleans typed."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        lr_scheduler_type="greedy",
        eval_strategy="epoch",
        lr_scheduler_kwargs='{"patience": "3", "factor": "0.5", "smooth": "true", "mode": "max"}',
    )
    assert args.lr_scheduler_kwargs == {"patience": 3, "factor": 0.5, "smooth": True, "mode": "max"}


def test_metric_schedules_default_their_metric_to_the_eval_loss(tmp_path: Path) -> None:
    """As in transformers: ``metric_for_best_model`` becomes "loss", lower being better."""
    args = TrainingArguments(
        output_dir=str(tmp_path), lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch"
    )
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)


def test_polynomial_end_above_the_rate_is_refused_when_built() -> None:
    """``lr_end`` must be below the optimizer's initial rate; the message gives both."""
    with pytest.raises(ConfigurationError, match=r"lr_end'\] \(0.5\) must be below .* \(0.1\)"):
        create_scheduler(
            "polynomial",
            _optimizer(0.1),
            num_warmup_steps=0,
            num_training_steps=5,
            scheduler_kwargs={"lr_end": 0.5},
        )


class _HalvingTrainer(Trainer):
    """Overrides ``create_scheduler`` only: the loop must train with its schedule."""

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LRScheduler:
        if self.lr_scheduler is None:
            assert self.optimizer is not None
            self.lr_scheduler = LambdaLR(self.optimizer, lambda step: 0.5**step)
        return self.lr_scheduler


def test_an_overridden_create_scheduler_drives_the_run(tmp_path: Path) -> None:
    """``create_optimizer_and_scheduler`` goes through the overridable methods."""
    run = make_run(tmp_path, max_steps=3)
    trainer = _HalvingTrainer(
        run.trainer.model,
        run.trainer.args,
        train_dataset=run.trainer.train_dataset,
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.4}),
    )
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert rates == [0.4, 0.2, 0.1]
    assert isinstance(trainer.optimizer, torch.optim.SGD)


def test_create_scheduler_schedules_the_optimizer_it_is_given(tmp_path: Path) -> None:
    """``create_scheduler(n, optimizer)`` schedules that optimizer, and keeps the result."""
    run = make_run(tmp_path, lr_scheduler_type="cosine", warmup_steps=2)
    other = _optimizer(0.1)
    scheduler = run.trainer.create_scheduler(10, optimizer=other)
    assert scheduler.optimizer is other and run.trainer.lr_scheduler is scheduler
    assert run.trainer.create_scheduler(10) is scheduler


@pytest.mark.parametrize(
    ("schedule", "kwargs"),
    [
        ("cosine_with_restarts", {"num_cycles": 2}),
        # "max" on the eval loss: every evaluation whose loss fell is a bad one, so the rate
        # halves at a point that depends on the metric reaching the schedule.
        ("reduce_lr_on_plateau", {"mode": "max", "patience": 0, "factor": 0.5}),
    ],
)
def test_a_script_trains_the_same_under_a_schedule(
    tmp_path: Path, schedule: str, kwargs: dict[str, Any]
) -> None:
    """Same losses and learning rates per logged step as transformers (fp32, weight decay)."""
    inputs = {"LR_SCHEDULER_TYPE": schedule, "LR_SCHEDULER_KWARGS": kwargs}
    theirs = run_script("schedule_classifier", "transformers", tmp_path / "hf", **inputs)
    ours = run_script("schedule_classifier", "trainbus", tmp_path / "tb", **inputs)
    assert ours["global_step"] == theirs["global_step"] == 16
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["learning_rates"] == pytest.approx(theirs["learning_rates"], rel=1e-12)
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["eval_losses"] == pytest.approx(theirs["eval_losses"], rel=1e-5)
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    assert len(set(theirs["learning_rates"])) > 1  # the schedule really moved the rate

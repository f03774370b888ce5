"""Mixed precision: bf16/fp16 autocast, the fp16 loss scaler and its skipped steps, half eval."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tests.support.tiny_bert import tiny_bert
from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import TrainerCallback, TrainingArguments
from trainbus.trainer._precision import Precision
from trainbus.trainer.testing import TinyRegressor


class AutocastProbe(TinyRegressor):
    """Records, at every forward, whether it trains and which autocast (if any) is on."""

    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.seen: list[tuple[bool, torch.dtype | None]] = []

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.seen.append((self.training, dtype))
        return super().forward(x, labels)


class LinearRegressor(nn.Module):
    """One linear layer under a mean squared error: an input of 1e6 overflows float16."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(logits, labels), "logits": logits}


class SmallRows(Dataset[dict[str, torch.Tensor]]):
    """Small inputs and targets (no overflow at the scaler's first scale), one row poisoned."""

    def __init__(self, length: int, poisoned: int | None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = 0.01 * torch.randn(length, 4, generator=generator)
        self.y = 0.01 * torch.randn(length, generator=generator)
        if poisoned is not None:
            self.x[poisoned] = 1e6

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


class StepWatcher(TrainerCallback):
    """Records, per update, whether ``optimizer.step`` changed the weights, and the schedule."""

    def __init__(self) -> None:
        self.before: torch.Tensor | None = None
        self.changed: list[bool] = []
        self.scheduled: list[int] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.before = kwargs["model"].linear.weight.detach().clone()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.before is not None
        self.changed.append(not torch.equal(self.before, kwargs["model"].linear.weight))
        self.scheduled.append(kwargs["lr_scheduler"].last_epoch)


def _fp16_run(tmp_path: Path, poisoned: int | None) -> tuple[Any, StepWatcher]:
    watcher = StepWatcher()
    run = make_run(tmp_path, model=LinearRegressor(), eval_size=0, fp16=True, callbacks=[watcher])
    run.trainer.train_dataset = SmallRows(16, poisoned)
    run.trainer.train()
    return run, watcher


def test_bf16_runs_forward_passes_under_bfloat16_autocast(tmp_path: Path) -> None:
    """Training and evaluation forwards run under bf16 autocast; predictions come back float32."""
    model = AutocastProbe()
    run = make_run(tmp_path, model=model, bf16=True, max_steps=2)
    run.trainer.train()
    assert model.seen == [(True, torch.bfloat16)] * 2
    model.seen.clear()
    output = run.trainer.predict(run.trainer.eval_dataset)  # type: ignore[arg-type]
    assert {seen for seen in model.seen} == {(False, torch.bfloat16)}
    assert isinstance(output.predictions, np.ndarray)
    assert output.predictions.dtype == np.float32
    assert np.isfinite(output.metrics["test_loss"])


def test_full_precision_runs_without_autocast(tmp_path: Path) -> None:
    """Without bf16/fp16 no forward pass sees autocast, in training or evaluation."""
    model = AutocastProbe()
    run = make_run(tmp_path, model=model, max_steps=2)
    run.trainer.train()
    run.trainer.evaluate()
    assert {dtype for _, dtype in model.seen} == {None}


def test_fp16_autocasts_to_float16_and_scales_the_loss(tmp_path: Path) -> None:
    """fp16 autocasts to float16 and backward goes through a GradScaler (it counts its steps)."""
    model = AutocastProbe()
    run = make_run(tmp_path, model=model, fp16=True, max_steps=2)
    run.trainer.train()
    assert model.seen == [(True, torch.float16)] * 2
    scaler = run.trainer.precision.scaler
    assert scaler is not None and scaler.is_enabled()
    assert scaler.get_scale() in (65536.0, 32768.0, 16384.0)  # halved once per skipped step


def test_fp16_skips_a_step_with_inf_gradients_as_transformers_does(tmp_path: Path) -> None:
    """An overflowing batch leaves the weights and the schedule alone; global_step still counts.

    transformers (through accelerate) does the same: the step events fire, ``global_step``
    advances, the scheduler does not step, and the logged ``grad_norm`` is not finite.
    """
    run, watcher = _fp16_run(tmp_path, poisoned=9)
    state = run.trainer.state
    assert state.global_step == 4
    assert watcher.changed.count(False) == 1
    skipped = watcher.changed.index(False)  # the update whose batch held the poisoned row
    assert watcher.scheduled == [step + (step < skipped) for step in range(4)]
    assert run.trainer.precision.scaler is not None
    assert run.trainer.precision.scaler.get_scale() == 32768.0  # halved once
    logs = [entry for entry in state.log_history if "grad_norm" in entry]
    assert [np.isfinite(entry["grad_norm"]) for entry in logs] == [
        step != skipped for step in range(4)
    ]
    if skipped < 3:  # the schedule held still: the next update trains at the same rate
        assert logs[skipped]["learning_rate"] == logs[skipped + 1]["learning_rate"]
    assert run.callback.events.count("optimizer_step") == 4


def test_fp16_without_overflow_steps_every_time(tmp_path: Path) -> None:
    """The control run: the same data without the poisoned row skips no step."""
    run, watcher = _fp16_run(tmp_path, poisoned=None)
    assert watcher.changed == [True] * 4
    assert watcher.scheduled == [1, 2, 3, 4]
    assert run.trainer.precision.scaler is not None
    assert run.trainer.precision.scaler.get_scale() == 65536.0


def test_full_precision_steps_with_torchs_own_functions() -> None:
    """In fp32 the loop calls torch's clip, step and schedule directly: no per-step wrapper."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    precision = Precision("cpu")
    clip, step, schedule = precision.steppers(optimizer, scheduler)
    assert clip is nn.utils.clip_grad_norm_
    assert step == optimizer.step and schedule == scheduler.step
    assert precision.autocast() is precision.autocast()
    assert isinstance(precision.autocast(), contextlib.nullcontext)


def test_compute_loss_context_manager_is_the_trainers_seam(tmp_path: Path) -> None:
    """An override of compute_loss_context_manager wraps every training and evaluation forward."""
    entered: list[str] = []

    @contextlib.contextmanager
    def marking() -> Any:
        entered.append("in")
        yield

    run = make_run(tmp_path, max_steps=2)
    run.trainer.compute_loss_context_manager = marking  # type: ignore[method-assign]
    run.trainer.train()
    assert len(entered) == 2
    run.trainer.evaluate()
    assert len(entered) == 4  # two evaluation batches of four


def _bert(tmp_path: Path) -> tuple[Any, list[dict[str, Any]]]:
    return tiny_bert()


def test_bf16_full_eval_casts_the_model_outside_train(tmp_path: Path) -> None:
    """evaluate() outside train() casts the model to bfloat16 in place, as transformers does."""
    model, rows = _bert(tmp_path)
    run = make_run(tmp_path, model=model, bf16_full_eval=True)
    run.trainer.eval_dataset = rows  # type: ignore[assignment]
    output = run.trainer.predict(rows)  # type: ignore[arg-type]
    assert next(model.parameters()).dtype == torch.bfloat16
    assert isinstance(output.predictions, np.ndarray)
    assert output.predictions.dtype == np.float32  # NumPy has no bfloat16
    assert np.isfinite(output.metrics["test_loss"])


def test_full_eval_leaves_the_model_alone_during_train(tmp_path: Path) -> None:
    """An evaluation inside train() keeps the training dtype (transformers casts only outside)."""
    model, rows = _bert(tmp_path)
    dtypes: list[torch.dtype] = []

    class Watch(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            dtypes.append(next(kwargs["model"].parameters()).dtype)

    run = make_run(
        tmp_path,
        model=model,
        fp16_full_eval=True,
        eval_strategy="steps",
        eval_steps=1,
        max_steps=1,
        callbacks=[Watch()],
    )
    run.trainer.train_dataset = run.trainer.eval_dataset = rows  # type: ignore[assignment]
    run.trainer.train()
    assert dtypes == [torch.float32]
    assert run.trainer.is_in_train is False


def test_fp16_refused_where_torch_cannot_autocast() -> None:
    """A device without float16 autocast is named in one ConfigurationError before training."""
    args = TrainingArguments(fp16=True, use_cpu=True)
    with pytest.raises(ConfigurationError, match=r"fp16=True needs a device .* meta cannot"):
        Precision.from_arguments(args, torch.device("meta"))

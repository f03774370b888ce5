"""The Trainer's public API: outputs, evaluation, prediction, model contract, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import (
    Evaluate,
    InitEnd,
    Log,
    Predict,
    PredictionStep,
    RunFinished,
    RunStarted,
    StepEnd,
)
from trainbus.bus.testing import RecordingSink
from trainbus.trainer import (
    DefaultFlowCallback,
    EvalPrediction,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer.testing import (
    LosslessModel,
    RegressionDataset,
    TinyRegressor,
    TupleOutputRegressor,
)


def test_train_returns_hf_train_output(tmp_path: Path) -> None:
    """``train()`` returns the step count, the mean loss of this call and the summary metrics."""
    run = make_run(tmp_path, max_steps=4, logging_steps=2)
    output = run.trainer.train()
    assert output.global_step == 4
    assert output.training_loss == output.metrics["train_loss"]
    losses = [e["loss"] for e in run.trainer.state.log_history if "loss" in e]
    assert output.training_loss == pytest.approx(sum(losses) / 2)
    started = run.bus_events()[0]
    assert isinstance(started, RunStarted)
    assert started.config["max_steps"] == 4
    assert started.hparams == {"in_features": 4, "hidden": 8, "dropout": 0.1}
    assert isinstance(run.bus_events()[1], InitEnd)


def test_default_callbacks_come_in_hf_order(tmp_path: Path) -> None:
    """Default flow first, user callbacks next, the printer (or progress bar) last."""
    run = make_run(tmp_path)
    names = [type(cb).__name__ for cb in run.trainer.callback_handler.callbacks]
    assert names == ["DefaultFlowCallback", "RecordingCallback", "PrinterCallback"]
    bar = make_run(tmp_path, disable_tqdm=False)
    assert isinstance(bar.trainer.callback_handler.callbacks[-1], ProgressCallback)


def test_callback_management_delegates_to_the_handler(tmp_path: Path) -> None:
    """``add``/``pop``/``remove_callback`` behave as Hugging Face's handler does."""
    run = make_run(tmp_path)
    printer = run.trainer.pop_callback(PrinterCallback)
    assert isinstance(printer, PrinterCallback)
    run.trainer.add_callback(printer)
    assert run.trainer.callback_handler.callbacks[-1] is printer
    run.trainer.remove_callback(DefaultFlowCallback)
    assert not any(
        isinstance(cb, DefaultFlowCallback) for cb in run.trainer.callback_handler.callbacks
    )


def test_tuple_output_models_train(tmp_path: Path) -> None:
    """A model returning ``(loss, logits)`` trains and evaluates like a dict-returning one."""
    run = make_run(tmp_path, model=TupleOutputRegressor(), max_steps=2)
    run.trainer.train()
    metrics = run.trainer.evaluate()
    assert metrics["eval_loss"] > 0


def test_a_second_train_call_gets_a_fresh_schedule(tmp_path: Path) -> None:
    """Training twice restarts the learning-rate schedule the trainer created (HF behaviour)."""
    run = make_run(tmp_path, max_steps=3, warmup_steps=1)
    run.trainer.train()
    first = [e["learning_rate"] for e in run.trainer.state.log_history if "loss" in e]
    run.trainer.train()
    second = [e["learning_rate"] for e in run.trainer.state.log_history if "loss" in e]
    assert first == second == pytest.approx([0.0, 0.01, 0.005])


class OverridingTrainer(Trainer):
    """Overrides every method a Hugging Face user subclasses, recording each call."""

    calls: list[str]

    def get_train_dataloader(self) -> Any:
        self.calls.append("get_train_dataloader")
        return super().get_train_dataloader()

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.calls.append("create_optimizer_and_scheduler")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0)
        super().create_optimizer_and_scheduler(num_training_steps)

    def compute_loss(  # type: ignore[override]  # a user's override, as written for HF
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        self.calls.append("compute_loss")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        loss = loss * 0 + 7.0
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
        self.calls.append("log")
        super().log({**logs, "custom": 1.0}, start_time)

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, Any]:
        self.calls.append("evaluate")
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)


def test_methods_overridden_on_a_trainer_subclass_are_the_ones_training_calls(
    tmp_path: Path,
) -> None:
    """The loop calls a subclass's dataloader, optimizer, loss, log and evaluate overrides."""
    run = make_run(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2)
    trainer = OverridingTrainer(
        TinyRegressor(),
        run.trainer.args,
        train_dataset=RegressionDataset(8),
        eval_dataset=RegressionDataset(4, seed=1),
        launcher=LocalLauncher(),
    )
    trainer.calls = []
    before = [p.detach().clone() for p in trainer.model.parameters()]
    output = trainer.train()
    assert trainer.calls[:3] == [
        "get_train_dataloader",
        "create_optimizer_and_scheduler",
        "compute_loss",
    ]
    # two training steps, then the evaluation's one batch (scored through compute_loss, as HF)
    assert trainer.calls.count("compute_loss") == 3 and "evaluate" in trainer.calls
    assert trainer.state.log_history[-2]["eval_loss"] == pytest.approx(7.0)
    assert output.training_loss == pytest.approx(7.0)  # the overridden loss
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert all(entry["custom"] == 1.0 for entry in trainer.state.log_history)


def test_grad_norm_is_logged_even_without_clipping(tmp_path: Path) -> None:
    """``max_grad_norm=0`` turns clipping off, yet ``grad_norm`` is still logged (HF v5)."""
    run = make_run(tmp_path, max_steps=1, max_grad_norm=0.0)
    run.trainer.train()
    assert run.trainer.state.log_history[0]["grad_norm"] > 0


class _GradsSeen(TrainerCallback):
    """Which parameters hold a gradient when each step begins (after the last step's zeroing)."""

    def __init__(self) -> None:
        self.with_grad: list[list[str]] = []

    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        self.with_grad.append([n for n, p in model.named_parameters() if p.grad is not None])


def test_every_gradient_is_cleared_after_each_update(tmp_path: Path) -> None:
    """As ``model.zero_grad(set_to_none=True)``: every parameter, even one the optimizer does not
    update (given its own optimizer over part of the model)."""
    model = TinyRegressor()
    seen = _GradsSeen()
    trainer = Trainer(
        model,
        TrainingArguments(
            output_dir=str(tmp_path), max_steps=3, report_to="none", disable_tqdm=True
        ),
        train_dataset=RegressionDataset(16),
        callbacks=[seen],
        optimizers=(torch.optim.SGD(model.body[0].parameters(), lr=0.1), None),
        launcher=LocalLauncher(),
    )
    trainer.train()
    assert seen.with_grad == [[], [], []]
    assert all(p.grad is None for p in model.parameters())


class _OwnZeroGrad(TinyRegressor):
    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        type(self).calls += 1
        super().zero_grad(set_to_none=set_to_none)


def test_a_model_overriding_zero_grad_has_it_called_after_each_update(tmp_path: Path) -> None:
    _OwnZeroGrad.calls = 0
    run = make_run(tmp_path, max_steps=3, model=_OwnZeroGrad())
    run.trainer.train()
    assert _OwnZeroGrad.calls == 1 + 3  # once before training, as in Hugging Face, then per update


def test_a_zero_grad_set_on_the_model_instance_is_called_too(tmp_path: Path) -> None:
    model = TinyRegressor()
    calls: list[bool] = []

    def zero_grad(set_to_none: bool = True) -> None:
        calls.append(set_to_none)
        torch.nn.Module.zero_grad(model, set_to_none=set_to_none)

    model.zero_grad = zero_grad  # type: ignore[method-assign]
    make_run(tmp_path, max_steps=2, model=model).trainer.train()
    assert calls == [True, True, True]


def test_evaluate_alone_is_a_run_with_prefixed_metrics(tmp_path: Path) -> None:
    """A direct ``evaluate()`` publishes prediction steps, one log and the evaluation.

    Keys come in transformers' order: renamed user metrics after ``eval_loss`` (the spec's table
    lists them first, but transformers 5.24 moves every key it prefixes to the end).
    """

    def metrics(prediction: EvalPrediction) -> dict[str, Any]:
        predictions, labels = prediction
        return {"mae": np.float32(np.abs(predictions - labels).mean())}

    run = make_run(tmp_path, compute_metrics=metrics)
    result = run.trainer.evaluate()
    assert list(result) == [
        "eval_loss",
        "eval_mae",
        "eval_runtime",
        "eval_samples_per_second",
        "eval_steps_per_second",
        "epoch",
    ]
    assert isinstance(result["eval_mae"], float)
    kinds = [type(e) for e in run.bus_events()]
    assert kinds == [
        RunStarted,
        InitEnd,
        PredictionStep,
        PredictionStep,
        Log,
        Evaluate,
        RunFinished,
    ]
    assert run.callback.events == [
        "init_end",
        "prediction_step",
        "prediction_step",
        "log",
        "evaluate",
    ]


def test_evaluate_a_dict_of_datasets_prefixes_each(tmp_path: Path) -> None:
    """``evaluate({"a": ..., "b": ...})`` logs ``eval_a_*`` and ``eval_b_*`` separately."""
    run = make_run(tmp_path)
    result = run.trainer.evaluate({"a": RegressionDataset(4), "b": RegressionDataset(4, seed=3)})
    assert "eval_a_loss" in result and "eval_b_loss" in result
    assert run.callback.events.count("evaluate") == 2


def test_predict_returns_outputs_and_never_logs(tmp_path: Path) -> None:
    """``predict()`` returns predictions and labels, ``test_`` metrics, and fires no ``on_log``."""
    run = make_run(tmp_path)
    output = run.trainer.predict(RegressionDataset(6, seed=2))
    assert output.predictions is not None and output.predictions.shape == (6,)
    assert output.label_ids is not None and output.label_ids.shape == (6,)
    assert "test_loss" in output.metrics
    assert "log" not in run.callback.events
    assert run.callback.events[-1] == "predict"
    assert any(isinstance(e, Predict) for e in run.bus_events())
    assert run.trainer.state.log_history == []


def test_default_collator_stacks_tensors_and_numbers() -> None:
    """Dict samples become a dict of stacked tensors; ints become long and floats float."""
    batch = default_data_collator(
        [{"x": torch.ones(2), "n": 1, "f": 0.5}, {"x": torch.zeros(2), "n": 2, "f": 1.5}]
    )
    assert batch["x"].shape == (2, 2)
    assert batch["n"].dtype == torch.long and batch["n"].tolist() == [1, 2]
    assert batch["f"].dtype == torch.float32


def test_a_model_without_loss_fails_before_any_update(tmp_path: Path) -> None:
    """A model that returns no loss raises at the first micro-batch, naming what it returned."""
    run = make_run(tmp_path, model=LosslessModel(), max_steps=2)
    with pytest.raises(ConfigurationError, match=r"did not return a loss.*\['logits'\]"):
        run.trainer.train()
    assert "optimizer_step" not in run.callback.events
    finished = run.bus_events()[-1]
    assert isinstance(finished, RunFinished)
    assert finished.status == "failed" and finished.error and "loss" in finished.error
    assert not any(isinstance(e, StepEnd) for e in run.bus_events())


def test_eval_strategy_without_eval_dataset_fails_at_init(tmp_path: Path) -> None:
    """An evaluation strategy with no eval dataset is refused when the Trainer is built."""
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=1)
    with pytest.raises(ConfigurationError, match="eval_strategy='steps' needs an eval_dataset"):
        Trainer(TupleOutputRegressor(), args, train_dataset=RegressionDataset(8))


def test_unknown_metric_for_best_model_names_the_available_keys(tmp_path: Path) -> None:
    """A ``metric_for_best_model`` evaluation never produces is one error listing what it did."""
    run = make_run(
        tmp_path, max_steps=4, eval_strategy="steps", eval_steps=1, metric_for_best_model="acc"
    )
    with pytest.raises(ConfigurationError, match=r"'eval_acc'.*'eval_loss'"):
        run.trainer.train()
    assert [s.global_step for s in run.callback.seen if s.event == "step_end"] == [1]


def test_unknown_metric_is_caught_by_eval_on_start_before_any_step(tmp_path: Path) -> None:
    """With ``eval_on_start`` the missing metric is reported before the first training step."""
    run = make_run(tmp_path, max_steps=4, eval_on_start=True, metric_for_best_model="acc")
    with pytest.raises(ConfigurationError, match="'eval_acc'"):
        run.trainer.train()
    assert "step_begin" not in run.callback.events


def test_keyboard_interrupt_finishes_the_run_as_killed(tmp_path: Path) -> None:
    """Ctrl-C during training re-raises and the run ends with status ``killed``."""

    class Interrupt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            raise KeyboardInterrupt

    run = make_run(tmp_path, max_steps=3, callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        run.trainer.train()
    finished = run.bus_events()[-1]
    assert isinstance(finished, RunFinished) and finished.status == "killed"


def test_plain_script_falls_back_to_the_local_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``TRAINBUS_LAUNCHER=local`` a bare ``Trainer`` trains with no orchestrator at all."""
    monkeypatch.setenv("TRAINBUS_LAUNCHER", "local")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, disable_tqdm=True, save_strategy="no", use_cpu=True
    )
    trainer = Trainer(TupleOutputRegressor(), args, train_dataset=RegressionDataset(8))
    assert trainer.train().global_step == 2


def test_named_integrations_without_an_orchestrator_fail_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``report_to=["tensorboard"]`` with no orchestrator to start it is one clear error, raised
    before training starts, never a run that silently writes nowhere."""
    monkeypatch.setenv("TRAINBUS_LAUNCHER", "local")  # as in a checkout that was never installed
    out = tmp_path / "out"
    args = TrainingArguments(
        output_dir=str(out), max_steps=2, disable_tqdm=True, report_to=["tensorboard"]
    )
    trainer = Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(8))
    with pytest.raises(ConfigurationError, match=r"report_to=\['tensorboard'\] needs") as caught:
        trainer.train()
    assert "TRAINBUS_LAUNCHER=local" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert trainer.state.global_step == 0
    assert not out.exists()


def test_report_to_all_without_an_orchestrator_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the default ``report_to="all"`` the local launcher trains and says once (not once
    per call) that nothing is reported; ``report_to="none"`` asked for nothing and hears nothing."""
    from structlog.testing import capture_logs

    monkeypatch.setenv("TRAINBUS_LAUNCHER", "local")
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, disable_tqdm=True)
    assert args.report_to == "all"
    trainer = Trainer(
        TinyRegressor(), args, train_dataset=RegressionDataset(8), eval_dataset=RegressionDataset(8)
    )
    quiet = Trainer(
        TinyRegressor(),
        TrainingArguments(
            output_dir=str(tmp_path), max_steps=2, disable_tqdm=True, report_to="none"
        ),
        train_dataset=RegressionDataset(8),
    )
    with capture_logs() as logs:
        assert trainer.train().global_step == 2
        trainer.evaluate()
        quiet.train()
    warnings = [e for e in logs if e["event"] == "report_to_not_honoured"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["report_to"] == "all"
    assert "TRAINBUS_LAUNCHER=local" in warnings[0]["reason"]


def test_a_launcher_passed_to_the_call_wins_over_the_trainers(tmp_path: Path) -> None:
    """``train(launcher=...)`` opens that call's run; the trainer's own launcher serves the rest."""
    own, passed = RecordingSink("own"), RecordingSink("passed")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, disable_tqdm=True, report_to="none"
    )
    trainer = Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(8),
        eval_dataset=RegressionDataset(8),
        launcher=LocalLauncher(sinks=[own]),
    )
    trainer.train(launcher=LocalLauncher(sinks=[passed]))
    trainer.evaluate()
    assert any(isinstance(e, StepEnd) for e in passed.received)
    assert not any(isinstance(e, Evaluate) for e in passed.received)
    assert any(isinstance(e, Evaluate) for e in own.received)
    assert not any(isinstance(e, StepEnd) for e in own.received)


@pytest.mark.parametrize("launcher", ["local", "default"])
def test_trainer_sinks_receive_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launcher: str
) -> None:
    """``Trainer(sinks=[...])`` gets every event, with the local and the installed launcher."""
    monkeypatch.setenv("TRAINBUS_LAUNCHER", launcher)
    sink = RecordingSink()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
    )
    trainer = Trainer(
        TupleOutputRegressor(), args, train_dataset=RegressionDataset(8), sinks=[sink]
    )
    trainer.train()
    kinds = [type(e) for e in sorted(sink.received, key=lambda e: e.seq)]
    assert kinds[:2] == [RunStarted, InitEnd]
    assert kinds[-1] is RunFinished
    assert kinds.count(StepEnd) == 2


def _async_trainer(tmp_path: Path) -> tuple[Trainer, Any]:
    run = make_run(tmp_path, max_steps=3, logging_steps=1)
    return run.trainer, run


async def test_train_async_on_asyncio(tmp_path: Path) -> None:
    """``await trainer.train_async()`` trains in a worker thread of a running asyncio loop."""
    import anyio

    trainer, run = _async_trainer(tmp_path)
    with anyio.fail_after(60):
        output = await trainer.train_async()
    assert output.global_step == 3
    assert run.callback.events[-1] == "train_end"
    assert isinstance(run.bus_events()[-1], RunFinished)


def test_train_async_on_trio(tmp_path: Path) -> None:
    """The same ``train_async`` runs under trio, through anyio."""
    import anyio

    trainer, run = _async_trainer(tmp_path)
    trainer.launcher = LocalLauncher(sinks=[run.sink])

    async def main() -> int:
        with anyio.fail_after(60):
            return (await trainer.train_async()).global_step

    assert anyio.run(main, backend="trio") == 3
    assert run.callback.events[-1] == "train_end"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_between_logging_steps(tmp_path: Path) -> None:
    """On CUDA, steps that do not log never synchronise with the host (sync debug mode errors)."""
    run = make_run(tmp_path, use_cpu=False, max_steps=6, logging_steps=6)

    class Strict(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:
                torch.cuda.set_sync_debug_mode("error")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 5:
                torch.cuda.set_sync_debug_mode("default")

    run.trainer.add_callback(Strict())
    try:
        run.trainer.train()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert run.trainer.state.global_step == 6

"""The Trainer API that transformers scripts call: model_init, compute_loss(_func), training_step,
log_metrics, save_metrics, save_state, the process-zero checks and flops."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.support.hf_differential import run_script
from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import Trainer, TrainerState, TrainingArguments
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


def _args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    defaults: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "disable_tqdm": True,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "num_train_epochs": 1,
    }
    return TrainingArguments(**{**defaults, **overrides})


def _trainer(tmp_path: Path, cls: type[Trainer] = Trainer, **kwargs: Any) -> Trainer:
    kwargs.setdefault("args", _args(tmp_path))
    kwargs.setdefault("train_dataset", RegressionDataset(12))
    return cls(launcher=LocalLauncher(), **kwargs)


class KwargsRegressor(TinyRegressor):
    """A model that takes loss keyword arguments: its loss is a sum over the labels divided by
    ``num_items_in_batch`` when given (the mean of this batch otherwise)."""

    def forward(  # type: ignore[override]  # adds the loss keyword arguments
        self, x: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        if labels is not None:
            errors = (out["logits"] - labels) ** 2
            count = kwargs.get("num_items_in_batch")
            out["loss"] = errors.sum() / count if count is not None else errors.mean()
        return out


# --- differential: the script on transformers and on trainbus ------------------------------------


def test_model_init_compute_loss_func_and_a_training_step_override_match_transformers(
    tmp_path: Path,
) -> None:
    """A script with model_init, compute_loss_func and a training_step override, default
    dropout, trained twice: the same losses, counts, eval losses and model_init calls."""
    pytest.importorskip("transformers")
    theirs = run_script("api_model_init", "transformers", tmp_path / "hf")
    ours = run_script("api_model_init", "trainbus", tmp_path / "tb")
    assert ours["global_step"] == theirs["global_step"] == 4
    assert ours["trials"] == theirs["trials"] == [None, {"run": 1}, {"run": 2}]
    assert [n for n, _ in ours["steps"]] == [n for n, _ in theirs["steps"]] == [16, 16, 4] * 2
    assert [loss for _, loss in ours["steps"]] == pytest.approx(
        [loss for _, loss in theirs["steps"]], rel=1e-5
    )
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["first_losses"] == pytest.approx(ours["losses"], rel=1e-6)  # re-initialised
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    assert ours["eval_losses"] == pytest.approx(theirs["eval_losses"], rel=1e-5)
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
    assert ours["accuracy"] == theirs["accuracy"]


# --- model_init ----------------------------------------------------------------------------------


def test_model_init_builds_a_fresh_seeded_model_at_every_train(tmp_path: Path) -> None:
    """Called once in __init__ and again per train() (with the trial), under args.seed."""
    trials: list[Any] = []

    def model_init(trial: Any) -> nn.Module:
        trials.append(trial)
        return TinyRegressor()

    trainer = _trainer(tmp_path, model_init=model_init)
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    first = trainer.train(trial={"lr": 1})
    torch.manual_seed(999)  # the seed is the trainer's, not whatever the script left behind
    second = trainer.train(trial={"lr": 2})
    assert trials == [None, {"lr": 1}, {"lr": 2}]
    assert second.training_loss == first.training_loss
    assert trainer.state.trial_params == {"lr": 2}
    assert trainer.state.is_hyper_param_search
    fresh = _trainer(tmp_path, model_init=lambda: TinyRegressor()).model
    for a, b in zip(initial, fresh.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"needs a model: pass model=\.\.\. or model_init=\.\.\."),
        (
            {"model": TinyRegressor(), "model_init": TinyRegressor},
            r"takes model or model_init, not both",
        ),
        (
            {
                "model_init": TinyRegressor,
                "optimizers": (torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), None),
            },
            r"optimizers=\(\.\.\.\) cannot be used with model_init",
        ),
        ({"model_init": lambda a, b: TinyRegressor()}, r"model_init must take no argument or one"),
        ({"model_init": lambda: None}, r"model_init returned None"),
        ({"model": "bert"}, r"model must be a torch.nn.Module, got str"),
    ],
)
def test_a_wrong_model_source_is_one_clear_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """Model and model_init are checked before anything runs, with one line naming the field."""
    with pytest.raises(ConfigurationError, match=message):
        _trainer(tmp_path, **kwargs)


# --- compute_loss, compute_loss_func, training_step ----------------------------------------------


def test_compute_loss_returns_outputs_on_request_and_leaves_the_inputs_alone(
    tmp_path: Path,
) -> None:
    """``return_outputs=True`` gives ``(loss, outputs)``; the caller's batch keeps its labels."""
    trainer = _trainer(tmp_path, model=TinyRegressor())
    batch = {"x": torch.randn(3, 4), "labels": torch.randn(3)}
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert torch.equal(loss, outputs["loss"])
    assert set(batch) == {"x", "labels"}
    assert trainer.compute_loss(trainer.model, batch).shape == ()


def test_compute_loss_func_gets_outputs_labels_and_the_update_count(tmp_path: Path) -> None:
    """The model runs without labels; the function receives them and num_items_in_batch (the
    labels of the whole window: 8, then a short window of 4), and its loss is used as is."""
    calls: list[tuple[set[str], int, int]] = []

    def loss_func(
        outputs: Mapping[str, torch.Tensor], labels: torch.Tensor, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        calls.append((set(outputs), len(labels), int(num_items_in_batch)))
        return ((outputs["logits"] - labels) ** 2).sum() / num_items_in_batch

    trainer = _trainer(
        tmp_path,
        model=TinyRegressor(dropout=0.0),
        args=_args(tmp_path, gradient_accumulation_steps=2),
        compute_loss_func=loss_func,
    )
    trainer.train()
    assert calls == [({"logits"}, 4, 8), ({"logits"}, 4, 8), ({"logits"}, 4, 4)]


class RecordingTrainer(Trainer):
    """A subclass overriding training_step the way transformers users do."""

    seen: list[tuple[int | None, float]]

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        count = None if num_items_in_batch is None else int(num_items_in_batch)
        self.seen.append((count, float(loss)))
        return loss


def test_the_loop_trains_through_an_overridden_training_step(tmp_path: Path) -> None:
    """Every micro-batch goes through the override; a model without loss keyword arguments gets
    no count, and its losses are divided by the micro-batches of the window."""
    trainer = _trainer(
        tmp_path,
        cls=RecordingTrainer,
        model=TinyRegressor(dropout=0.0),
        args=_args(tmp_path, gradient_accumulation_steps=2),
    )
    assert isinstance(trainer, RecordingTrainer)
    trainer.seen = []
    trainer.train()
    assert [count for count, _ in trainer.seen] == [None, None, None]
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    halves = [loss for _, loss in trainer.seen]
    assert logged == pytest.approx([halves[0] + halves[1], halves[2]])


def test_a_loss_already_scaled_for_accumulation_is_not_divided(tmp_path: Path) -> None:
    """``loss_is_scaled_for_ga = True`` on a subclass: the loss of a window of two is used as
    compute_loss returns it, twice what the default (divided) step returns."""

    class Scaled(RecordingTrainer):
        loss_is_scaled_for_ga = True

    seen = []
    for cls in (RecordingTrainer, Scaled):
        trainer = _trainer(
            tmp_path / cls.__name__,
            cls=cls,
            model=TinyRegressor(dropout=0.0),
            args=_args(tmp_path / cls.__name__, gradient_accumulation_steps=2, learning_rate=0.0),
        )
        assert isinstance(trainer, RecordingTrainer)
        trainer.seen = []
        trainer.train()
        seen.append([loss for _, loss in trainer.seen])
    divided, scaled = seen
    assert scaled[:2] == pytest.approx([2 * loss for loss in divided[:2]], rel=1e-6)
    assert scaled[2] == pytest.approx(divided[2], rel=1e-6)  # a window of one: nothing to divide


# --- staples: log_metrics, save_metrics, save_state ----------------------------------------------


def test_log_metrics_prints_an_aligned_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sorted keys, runtimes as durations, flops in GF, floats to 4 decimals."""
    trainer = _trainer(tmp_path, model=TinyRegressor())
    trainer.log_metrics(
        "train",
        {"train_runtime": 3725.5, "total_flos": 3 * 2**30, "train_loss": 0.123456, "epoch": 2},
    )
    assert capsys.readouterr().out.splitlines() == [
        "***** train metrics *****",
        "  epoch         =          2",
        "  total_flos    =        3GF",
        "  train_loss    =     0.1235",
        "  train_runtime = 1:02:05.50",
    ]


def test_save_metrics_writes_the_split_and_merges_all_results(tmp_path: Path) -> None:
    """``<split>_results.json`` as given; ``all_results.json`` collects the splits (combined)."""
    trainer = _trainer(tmp_path, model=TinyRegressor())
    out = tmp_path / "out"
    trainer.save_metrics("train", {"train_loss": 0.5, "epoch": 1.0})
    trainer.save_metrics("eval", {"eval_loss": 0.25, "epoch": 1.0})
    trainer.save_metrics("test", {"test_loss": 0.75}, combined=False)
    assert json.loads((out / "train_results.json").read_text()) == {
        "epoch": 1.0,
        "train_loss": 0.5,
    }
    assert json.loads((out / "test_results.json").read_text()) == {"test_loss": 0.75}
    assert json.loads((out / "all_results.json").read_text()) == {
        "epoch": 1.0,
        "eval_loss": 0.25,
        "train_loss": 0.5,
    }
    assert (out / "eval_results.json").read_text().startswith('{\n    "epoch": 1.0,')


def test_save_state_writes_the_trainer_state(tmp_path: Path) -> None:
    """After training, ``trainer_state.json`` in output_dir reads back as the state."""
    trainer = _trainer(tmp_path, model=TinyRegressor())
    trainer.train()
    trainer.save_state()
    loaded = TrainerState.load_from_json(tmp_path / "out" / "trainer_state.json")
    assert loaded.global_step == trainer.state.global_step == 3
    assert loaded.log_history == json.loads(json.dumps(trainer.state.log_history))


def test_only_world_process_zero_writes_or_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On rank 1 of 2 (local rank 1), the staples write and print nothing."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    trainer = _trainer(tmp_path, model=TinyRegressor())
    assert not trainer.is_world_process_zero()
    assert not trainer.is_local_process_zero()
    trainer.log_metrics("train", {"train_loss": 0.5})
    trainer.save_metrics("train", {"train_loss": 0.5})
    trainer.save_state()
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "out").exists()


# --- flops ---------------------------------------------------------------------------------------


class CountingParameters(TinyRegressor):
    """A model that counts its parameters as transformers models do (``num_parameters``)."""

    main_input_name = "x"
    counted = 0

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        type(self).counted += 1
        return sum(p.numel() for p in self.parameters())


def test_total_flos_is_six_per_token_per_parameter_counted_once(tmp_path: Path) -> None:
    """6 x input elements x parameters per micro-batch, the parameters counted once per run."""
    model = CountingParameters()
    trainer = _trainer(tmp_path, model=model)
    CountingParameters.counted = 0
    output = trainer.train()
    parameters = sum(p.numel() for p in model.parameters())
    assert trainer.state.total_flos == 6 * 12 * 4 * parameters  # 12 samples of 4 features
    assert output.metrics.get("total_flos", trainer.state.total_flos) == trainer.state.total_flos
    assert CountingParameters.counted == 1
    assert trainer.floating_point_ops({"x": torch.zeros(2, 4)}) == 6 * 8 * parameters


def test_a_models_own_floating_point_ops_and_an_override_win(tmp_path: Path) -> None:
    """The model's ``floating_point_ops`` is used where it has one; a Trainer subclass's
    override is called per micro-batch instead; a plain model counts nothing."""

    class OwnCount(TinyRegressor):
        def floating_point_ops(self, inputs: Mapping[str, Any]) -> int:
            return 10

    trainer = _trainer(tmp_path / "own", model=OwnCount())
    trainer.train()
    assert trainer.state.total_flos == 30  # three micro-batches

    class Overriding(Trainer):
        def floating_point_ops(self, inputs: Mapping[str, Any]) -> float:
            return 1.5

    trainer = _trainer(tmp_path / "override", cls=Overriding, model=OwnCount())
    trainer.train()
    assert trainer.state.total_flos == 4.5

    trainer = _trainer(tmp_path / "plain", model=TinyRegressor())
    trainer.train()
    assert trainer.state.total_flos == 0


def test_a_checkpoint_holds_the_flops_of_every_step_before_it(tmp_path: Path) -> None:
    """Flops counted since the last log entry go into ``total_flos`` before a checkpoint's
    state is written (as transformers' ``store_flos``), so a resume does not lose them."""

    class OwnCount(TinyRegressor):
        def floating_point_ops(self, inputs: Mapping[str, Any]) -> int:
            return 10

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=100,  # no log entry before the save: only the checkpoint stores them
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        disable_tqdm=True,
    )
    _trainer(tmp_path, model=OwnCount(), args=args).train()
    saved = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["total_flos"] == 20  # two micro-batches of 10


def test_the_model_config_gets_use_cache_as_transformers_sets_it(tmp_path: Path) -> None:
    """Building the Trainer writes ``args.use_cache`` into the model's config (False by default:
    a training forward keeps no key/value cache), for both values, as transformers does."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8)
    for wanted in (False, True):
        model = transformers.GPT2LMHeadModel(config)
        model.config.use_cache = not wanted
        args = TrainingArguments(output_dir=str(tmp_path), use_cache=wanted, report_to="none")
        Trainer(model, args)
        assert model.config.use_cache is wanted


def test_full_determinism_switches_torch_to_deterministic_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``full_determinism=True`` seeds and turns on torch's deterministic algorithms and cuDNN's
    switches when the Trainer is built, as transformers does; the default leaves them alone."""
    for name in (
        "CUDA_LAUNCH_BLOCKING",
        "CUBLAS_WORKSPACE_CONFIG",
        "FLASH_ATTENTION_DETERMINISTIC",
    ):
        monkeypatch.setenv(name, "")  # restored after the test: the Trainer sets them
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        Trainer(TinyRegressor(), TrainingArguments(output_dir=str(tmp_path), report_to="none"))
        assert torch.are_deterministic_algorithms_enabled() is before[0]
        args = TrainingArguments(output_dir=str(tmp_path), full_determinism=True, report_to="none")
        torch.manual_seed(123)
        Trainer(TinyRegressor(), args)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.initial_seed() == args.seed
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]

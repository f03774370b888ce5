"""Model setup: activation checkpointing really recomputes, torch.compile really compiles, TF32."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.tiny_bert import tiny_bert
from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import TrainingArguments
from trainbus.trainer._model_setup import tf32_available
from trainbus.trainer.testing import TinyRegressor

COUNTING_BACKEND = "trainbus_test_counting"
compiled_graphs: list[torch.fx.GraphModule] = []


def _counting_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    """A dynamo backend that records each graph it is handed and runs it as traced."""
    compiled_graphs.append(gm)
    return gm.forward


if COUNTING_BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(_counting_backend, name=COUNTING_BACKEND)


def _bert_rows() -> tuple[Any, list[dict[str, Any]]]:
    return tiny_bert(layers=2, dropout=0.0)


def _train_bert(tmp_path: Path, **overrides: Any) -> tuple[Any, list[float], list[int]]:
    """Two updates of a two-layer BERT; returns it, the losses and each layer's forward count.

    The count is taken inside each layer (its feed-forward block): transformers checkpoints a
    layer's ``forward``, so the layer's own hooks stay outside the recomputation.
    """
    model, rows = _bert_rows()
    layers = model.bert.encoder.layer
    calls = [0] * len(layers)
    for index, layer in enumerate(layers):

        def count(*_: Any, index: int = index) -> None:
            calls[index] += 1

        layer.intermediate.register_forward_hook(count)
    run = make_run(tmp_path, model=model, eval_size=0, max_steps=2, **overrides)
    run.trainer.train_dataset = rows  # type: ignore[assignment]
    run.trainer.train()
    losses = [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry]
    return model, losses, calls


def test_gradient_checkpointing_recomputes_each_layer_in_backward(tmp_path: Path) -> None:
    """With checkpointing every layer runs twice per micro-batch, and the losses do not move."""
    _, plain_losses, plain_calls = _train_bert(tmp_path / "plain")
    with pytest.warns(FutureWarning, match="gradient_checkpointing is deprecated"):
        model, losses, calls = _train_bert(tmp_path / "gc", gradient_checkpointing=True)
    assert plain_calls == [2, 2]  # two updates of one micro-batch each
    assert calls == [4, 4]  # and once more in each backward
    assert model.is_activation_checkpointing
    assert losses == pytest.approx(plain_losses, rel=1e-6)


def test_checkpointing_kwargs_reach_the_model(tmp_path: Path) -> None:
    """every_n_layers goes to the model's method; the rest to torch.utils.checkpoint."""
    model, _, calls = _train_bert(
        tmp_path,
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": 2},
    )
    first, second = model.bert.encoder.layer
    assert first.gradient_checkpointing and not second.gradient_checkpointing
    assert first._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    assert calls == [4, 2]


def test_gradient_checkpointing_on_a_plain_module_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """A model without a checkpointing switch is one clear error when the Trainer is built."""
    with pytest.raises(ConfigurationError, match=r"gradient_checkpointing=True needs a model"):
        make_run(tmp_path, activation_checkpointing=True)


def test_a_model_that_does_not_support_checkpointing_is_refused(tmp_path: Path) -> None:
    """supports_gradient_checkpointing=False (transformers' flag) is refused by name."""
    model = TinyRegressor()
    model.supports_gradient_checkpointing = False  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="does not support activation checkpointing"):
        make_run(tmp_path, model=model, activation_checkpointing=True)


def test_torch_compile_runs_the_training_forward_through_the_compiled_module(
    tmp_path: Path,
) -> None:
    """The backend receives the model's graph: the training forward runs compiled."""
    compiled_graphs.clear()
    run = make_run(
        tmp_path / "compiled",
        model=TinyRegressor(dropout=0.0),
        max_steps=3,
        torch_compile_backend=COUNTING_BACKEND,
    )
    assert run.trainer.args.torch_compile
    run.trainer.train()
    assert compiled_graphs, "the training forward never reached the compile backend"
    wrapped = run.trainer.model_wrapped
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert wrapped._orig_mod is run.trainer.model
    assert run.trainer.state.global_step == 3


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_backends_train_like_the_plain_model(tmp_path: Path, backend: str) -> None:
    """eager and aot_eager compile on CPU and reproduce the uncompiled losses."""
    torch.manual_seed(0)
    plain = make_run(tmp_path / "plain", model=TinyRegressor(dropout=0.0), max_steps=3)
    plain.trainer.train()
    torch.manual_seed(0)
    run = make_run(
        tmp_path / backend,
        model=TinyRegressor(dropout=0.0),
        max_steps=3,
        torch_compile=True,
        torch_compile_backend=backend,
    )
    run.trainer.train()
    assert isinstance(run.trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)

    def losses(history: list[dict[str, Any]]) -> list[float]:
        return [entry["loss"] for entry in history if "loss" in entry]

    assert losses(run.trainer.state.log_history) == pytest.approx(
        losses(plain.trainer.state.log_history), rel=1e-5
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"torch_compile_backend": "no_such_backend"}, r"torch_compile_backend='no_such_backend'"),
        (
            {"torch_compile_backend": "inductor", "torch_compile_mode": "fastest"},
            r"torch_compile_mode='fastest' cannot compile",
        ),
    ],
)
def test_bad_compile_settings_are_refused_before_training(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    """An unknown backend or mode is one ConfigurationError when the Trainer is built."""
    with pytest.raises(ConfigurationError, match=message):
        make_run(tmp_path, **overrides)


def test_compile_and_checkpointing_arguments_follow_transformers() -> None:
    """A backend or a mode turns torch_compile on; inductor is the default backend."""
    assert TrainingArguments(torch_compile_mode="default").torch_compile_backend == "inductor"
    assert TrainingArguments(torch_compile_backend="eager").torch_compile
    args = TrainingArguments(torch_compile=True)
    assert args.torch_compile_backend == "inductor" and args.torch_compile_mode is None
    plain = TrainingArguments()
    assert plain.activation_checkpointing is False and plain.gradient_checkpointing is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = TrainingArguments(activation_checkpointing=True)
    assert new.gradient_checkpointing is True  # the old name mirrors the new
    parsed = TrainingArguments(gradient_checkpointing_kwargs='{"use_reentrant": true}')
    assert parsed.activation_checkpointing_kwargs == {"use_reentrant": True}
    with pytest.raises(ConfigurationError, match="activation_checkpointing_kwargs must be a dict"):
        TrainingArguments(activation_checkpointing_kwargs=["use_reentrant"])  # type: ignore[arg-type]


@pytest.mark.skipif(tf32_available(), reason="checks the refusal on a machine without TF32")
def test_tf32_without_an_ampere_gpu_is_refused(tmp_path: Path) -> None:
    """tf32=True needs TF32 hardware (as in transformers); tf32=False is accepted anywhere."""
    with pytest.raises(ConfigurationError, match=r"tf32=True needs an Ampere or newer NVIDIA GPU"):
        make_run(tmp_path, tf32=True)
    make_run(tmp_path, tf32=False)


@pytest.mark.gpu
@pytest.mark.skipif(not tf32_available(), reason="needs a CUDA GPU with TF32")
def test_tf32_switches_torchs_fp32_precision(tmp_path: Path) -> None:
    """tf32=True and tf32=False set torch's process-wide fp32 precision, as transformers does."""
    previous = torch.backends.fp32_precision  # type: ignore[attr-defined]
    try:
        make_run(tmp_path, tf32=True, use_cpu=False)
        assert torch.backends.fp32_precision == "tf32"  # type: ignore[attr-defined]
        make_run(tmp_path, tf32=False, use_cpu=False)
        assert torch.backends.fp32_precision == "ieee"  # type: ignore[attr-defined]
    finally:
        torch.backends.fp32_precision = previous  # type: ignore[attr-defined]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(tmp_path: Path, flag: str) -> None:
    """On a GPU, bf16 and fp16 train a few finite steps (fp16 through a CUDA GradScaler)."""
    run = make_run(tmp_path, use_cpu=False, max_steps=4, **{flag: True})
    run.trainer.train()
    assert run.trainer.state.global_step == 4
    if flag == "fp16":
        assert run.trainer.precision.scaler is not None
        assert run.trainer.precision.device_type == "cuda"
    assert torch.isfinite(torch.tensor(run.trainer.evaluate()["eval_loss"]))

"""Optimizers and weight-decay groups: each ``optim`` name builds what transformers builds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import Trainer, TrainingArguments
from trainbus.trainer._optim_arguments import IMPLEMENTED_OPTIMIZERS
from trainbus.trainer.testing import TinyRegressor

transformers = pytest.importorskip("transformers")


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=40, n_embd=8, n_layer=1, n_head=2, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


class _Block(nn.Module):
    """Names and module types that the ``ndim`` rule and the name rule disagree on."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.q_norm = nn.RMSNorm(4)  # excluded by name
        self.rms = nn.RMSNorm(4)  # an RMSNorm under a plain name keeps its decay
        self.Normal = nn.Linear(4, 4)  # "normal" is no "norm"
        self.gate = nn.Parameter(torch.ones(4))  # 1-D, yet decayed
        self.head = nn.Linear(4, 4, bias=False)
        self.final_layerNorm = nn.Linear(4, 4)  # 2-D, yet named a layer norm


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.ln = nn.LayerNorm(4)  # excluded by type alone
        self.ln.extra = nn.Linear(4, 4)  # anything inside a LayerNorm is excluded too
        self.tied = self.blocks[0].Normal  # shared: named once by named_parameters()
        self.scale = nn.Parameter(torch.ones(()))


MODELS = {"bert": _bert, "gpt2": _gpt2, "odd": _Odd}


def _hf_trainer(tmp_path: Path, model: nn.Module, **fields: Any) -> Any:
    kwargs = fields.pop("trainer_kwargs", {})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), report_to="none", use_cpu=True, **fields
    )
    return transformers.Trainer(model=model, args=args, **kwargs)


def _our_trainer(tmp_path: Path, model: nn.Module, **fields: Any) -> Trainer:
    kwargs = fields.pop("trainer_kwargs", {})
    args = TrainingArguments(
        output_dir=str(tmp_path / "ours"), report_to="none", use_cpu=True, **fields
    )
    return Trainer(model=model, args=args, **kwargs)


def _groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict[str, Any]]:
    """Each group's settings, with its parameters as names (membership, in order)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        {
            **{k: v for k, v in group.items() if k != "params"},
            "params": [names[id(p)] for p in group["params"]],
        }
        for group in optimizer.param_groups
    ]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decay_parameter_names_are_transformers_own(tmp_path: Path, name: str) -> None:
    """Biases and norms (by name or by LayerNorm type) get no decay, exactly as in transformers."""
    theirs = _hf_trainer(tmp_path, MODELS[name]()).get_decay_parameter_names(MODELS[name]())
    ours = _our_trainer(tmp_path, MODELS[name]()).get_decay_parameter_names(MODELS[name]())
    assert ours == theirs
    if name == "odd":  # the cases the former ndim rule got wrong are really exercised
        assert "blocks.0.gate" in ours and "blocks.0.rms.weight" in ours
        assert "blocks.0.final_layerNorm.weight" not in ours and "ln.extra.weight" not in ours


OPTIMIZER_CASES = [
    ("adamw_torch_fused", None, 0.0),
    ("adamw_torch_fused", None, 0.01),
    ("adamw_torch", None, 0.1),
    ("sgd", None, 0.0),
    ("sgd", "momentum=0.9, dampening=0.1, nesterov=false", 0.01),
    ("sgd", "momentum=0.9,nesterov=True", 0.0),
    ("adagrad", "lr_decay=0.01,eps=1e-9", 0.01),
    ("adagrad", None, 0.0),
    ("rmsprop", "momentum=0.5,alpha=0.9,eps=1e-7,centered=true", 0.01),
    ("rmsprop", None, 0.0),
    ("adafactor", None, 0.01),
]


@pytest.mark.parametrize(("optim", "optim_args", "weight_decay"), OPTIMIZER_CASES)
def test_each_optim_name_builds_transformers_optimizer(
    tmp_path: Path, optim: str, optim_args: str | None, weight_decay: float
) -> None:
    """Same class, keyword arguments, defaults, and parameter groups (members and settings).

    Without weight decay transformers' two groups would be alike and ours are merged into one
    (one pass of the optimizer per step): the same parameters, in transformers' order, with the
    same settings."""
    fields = {
        "optim": optim,
        "optim_args": optim_args,
        "weight_decay": weight_decay,
        "learning_rate": 3e-3,
        "adam_beta1": 0.8,
        "adam_epsilon": 1e-7,
    }
    model = _Odd()
    hf = _hf_trainer(tmp_path, model, **fields)
    ours = _our_trainer(tmp_path, model, **fields)
    theirs_cls, theirs_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(hf.args, model)
    our_cls, our_kwargs = Trainer.get_optimizer_cls_and_kwargs(ours.args, model)
    assert (our_cls, our_kwargs) == (theirs_cls, theirs_kwargs)
    theirs, built = hf.create_optimizer(), ours.create_optimizer()
    assert type(built) is type(theirs)
    assert built.defaults == theirs.defaults
    expected = _groups(theirs, model)
    if weight_decay == 0:
        assert expected[0].keys() == expected[1].keys()
        assert {k: v for k, v in expected[0].items() if k != "params"} == {
            k: v for k, v in expected[1].items() if k != "params"
        }
        expected = [{**expected[0], "params": expected[0]["params"] + expected[1]["params"]}]
    assert _groups(built, model) == expected


def test_optimizer_cls_and_kwargs_is_built_over_the_same_groups(tmp_path: Path) -> None:
    """A class and kwargs handed to the constructor replace ``optim``; the caller's dict stays."""
    kwargs = {"lr": 0.2, "momentum": 0.5}
    model = _bert()
    given = {"optimizer_cls_and_kwargs": (torch.optim.SGD, kwargs)}
    theirs = _hf_trainer(tmp_path, model, weight_decay=0.05, trainer_kwargs=given)
    built = _our_trainer(tmp_path, model, weight_decay=0.05, trainer_kwargs=given)
    theirs, built = theirs.create_optimizer(), built.create_optimizer()
    assert type(built) is torch.optim.SGD and kwargs == {"lr": 0.2, "momentum": 0.5}
    assert built.defaults == theirs.defaults
    assert _groups(built, model) == _groups(theirs, model)


def test_params_in_the_kwargs_replace_the_groups(tmp_path: Path) -> None:
    """A ``params`` entry is the optimizer's parameters, as in transformers (e.g. one layer)."""
    model = TinyRegressor()
    only = [model.body[0].weight]
    trainer = _our_trainer(
        tmp_path,
        model,
        trainer_kwargs={"optimizer_cls_and_kwargs": (torch.optim.SGD, {"lr": 0.1, "params": only})},
    )
    assert [group["params"] for group in trainer.create_optimizer().param_groups] == [only]


def test_an_optimizer_and_a_class_together_are_refused(tmp_path: Path) -> None:
    """Both ``optimizers=`` and ``optimizer_cls_and_kwargs=``: one clear error at construction."""
    model = TinyRegressor()
    built = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match="optimizer_cls_and_kwargs"):
        Trainer(
            model,
            TrainingArguments(output_dir=str(tmp_path)),
            optimizers=(built, None),
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}),
        )


def test_the_implemented_names_are_transformers_names() -> None:
    """Every name we implement is one of transformers' ``OptimizerNames`` (none invented)."""
    names = {member.value for member in transformers.training_args.OptimizerNames}
    assert set(IMPLEMENTED_OPTIMIZERS) <= names


@pytest.mark.parametrize(
    ("optim", "optim_args", "message"),
    [
        ("sgd", "momentun=0.9", r"optim_args key 'momentun' is not read by optim='sgd'"),
        ("adamw_torch_fused", "betas=0.9", r"optim_args key 'betas'.*reads no keys"),
        ("sgd", "momentum", r"optim_args must be 'key=value' pairs"),
        ("rmsprop", "alpha=fast", r"optim_args alpha must be a finite number"),
        ("sgd", "nesterov=maybe", r"optim_args nesterov='maybe' is not a boolean"),
        (
            "adamw_bnb_8bit",
            None,
            r"optim='adamw_bnb_8bit' is not supported by trainbus.*'adamw_torch_fused'",
        ),
    ],
)
def test_bad_optimizer_arguments_are_refused_when_built(
    tmp_path: Path, optim: str, optim_args: str | None, message: str
) -> None:
    """A key the optimizer ignores, a malformed entry or value, an unknown name: one clear line."""
    with pytest.raises(ConfigurationError, match=message):
        TrainingArguments(output_dir=str(tmp_path), optim=optim, optim_args=optim_args)


def test_default_is_fused_adamw_and_plain_adamw_on_request(tmp_path: Path) -> None:
    """``adamw_torch_fused`` (the default) and ``adamw_torch`` build the optimizer they name."""
    fused = make_run(tmp_path / "fused", max_steps=2, weight_decay=0.1)
    fused.trainer.train()
    assert fused.trainer.args.optim == "adamw_torch_fused"
    assert fused.trainer.optimizer is not None
    assert [group["fused"] for group in fused.trainer.optimizer.param_groups] == [True, True]
    plain = make_run(tmp_path / "plain", max_steps=2, optim="adamw_torch")
    plain.trainer.train()
    assert plain.trainer.optimizer is not None
    assert [group["fused"] for group in plain.trainer.optimizer.param_groups] == [None]


class _NoFusedKernel(torch.optim.AdamW):
    """An AdamW for parameters torch has no fused kernel for (as on some devices and dtypes)."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on supported devices")
        super().__init__(params, **kwargs)


def test_without_a_fused_kernel_it_falls_back_to_the_unfused_optimizer(tmp_path: Path) -> None:
    """Parameters torch cannot fuse for still train, with the unfused optimizer."""
    run = make_run(tmp_path, max_steps=2)
    run.trainer.optimizer_cls_and_kwargs = (_NoFusedKernel, {"lr": 0.1, "fused": True})
    run.trainer.train()
    optimizer = run.trainer.optimizer
    assert isinstance(optimizer, _NoFusedKernel)
    assert [group["fused"] for group in optimizer.param_groups] == [None]


def test_adafactor_without_transformers_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adafactor is transformers'; without the package, the error says which one to install."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an absent package looks like
    monkeypatch.setitem(sys.modules, "transformers.optimization", None)
    trainer = _our_trainer(tmp_path, TinyRegressor(), optim="adafactor")
    with pytest.raises(ConfigurationError, match=r"adafactor.*pip install transformers"):
        trainer.create_optimizer()

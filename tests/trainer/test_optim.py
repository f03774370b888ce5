"""The optimizer ``optim`` names: fused AdamW by default, as in Hugging Face v5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import TrainingArguments
from trainbus.trainer._optim import create_optimizer
from trainbus.trainer.testing import TinyRegressor


def _fused(optimizer: torch.optim.Optimizer) -> list[Any]:
    return [group.get("fused") for group in optimizer.param_groups]


def test_default_is_fused_adamw_and_plain_adamw_on_request(tmp_path: Path) -> None:
    """``adamw_torch_fused`` (the default) and ``adamw_torch`` build the optimizer they name."""
    fused = make_run(tmp_path / "fused", max_steps=2, weight_decay=0.1)
    fused.trainer.train()
    assert fused.trainer.args.optim == "adamw_torch_fused"
    assert _fused(fused.trainer.optimizer) == [True, True]  # type: ignore[arg-type]
    plain = make_run(tmp_path / "plain", max_steps=2, optim="adamw_torch")
    plain.trainer.train()
    assert _fused(plain.trainer.optimizer) == [None]  # type: ignore[arg-type]


def test_an_unknown_optimizer_names_the_field(tmp_path: Path) -> None:
    """Anything else is refused before training, with the accepted names."""
    with pytest.raises(ConfigurationError, match=r"optim.*adamw_torch_fused"):
        TrainingArguments(output_dir=str(tmp_path), optim="adamw_bnb_8bit")


def test_without_a_fused_kernel_it_falls_back_to_plain_adamw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parameters torch cannot fuse for still train, with the unfused AdamW."""
    real = torch.optim.AdamW

    def no_fused_kernel(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on supported devices")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused_kernel)
    optimizer = create_optimizer(
        TinyRegressor(), learning_rate=0.1, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8
    )
    assert isinstance(optimizer, real) and _fused(optimizer) == [None]

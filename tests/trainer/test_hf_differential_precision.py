"""bf16 autocast with gradient checkpointing, on both Trainers, from one unchanged script.

The script trains a tiny BERT classifier with ``bf16=True`` and ``gradient_checkpointing=True``
on CPU and evaluates at the end; bf16 results must agree within 1 %.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.hf_differential import run_script

pytest.importorskip("transformers")

SCRIPT = "bf16_checkpointing_accumulation"
BF16 = 1e-2


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Both runs of the script with two micro-batches of four per update (shared by two tests)."""
    root = tmp_path_factory.mktemp("accumulated")
    return {
        flavour: run_script(SCRIPT, flavour, root / flavour, ACCUMULATION=2)
        for flavour in ("transformers", "trainbus")
    }


def test_bf16_with_checkpointing_gives_transformers_losses(tmp_path: Path) -> None:
    """One micro-batch of eight per update: losses, grad norms and eval loss agree within 1 %."""
    theirs = run_script(SCRIPT, "transformers", tmp_path / "hf", ACCUMULATION=1)
    ours = run_script(SCRIPT, "trainbus", tmp_path / "tb", ACCUMULATION=1)
    assert ours["global_step"] == theirs["global_step"] == 8
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=BF16)
    assert ours["grad_norms"] == pytest.approx(theirs["grad_norms"], rel=BF16)
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=BF16)
    assert ours["checkpointing"] is theirs["checkpointing"] is True
    assert ours["weight_dtype"] == theirs["weight_dtype"] == "torch.float32"


def test_bf16_with_checkpointing_and_accumulation_gives_transformers_steps_and_eval_loss(
    accumulated: dict[str, dict[str, Any]],
) -> None:
    """Two micro-batches per update: the same number of updates and eval loss within 1 %."""
    theirs, ours = accumulated["transformers"], accumulated["trainbus"]
    assert ours["global_step"] == theirs["global_step"] == 8
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=BF16)
    assert ours["checkpointing"] is theirs["checkpointing"] is True


def test_bf16_with_accumulation_gives_transformers_training_losses(
    accumulated: dict[str, dict[str, Any]],
) -> None:
    """Two micro-batches per update: the logged training losses agree within 1 %."""
    theirs, ours = accumulated["transformers"], accumulated["trainbus"]
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=BF16)

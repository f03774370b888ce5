"""The global RNG is drawn from where transformers draws from it, so dropout and a collator's
masking give the same numbers on both Trainers; a resumed run still follows the straight one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.hf_differential import WORDS, run_script
from tests.trainer.recording import Run, StopAt, make_run, time_limit  # noqa: F401  (autouse)


def test_masked_lm_with_dropout_and_random_masking_matches_transformers(tmp_path: Path) -> None:
    """Default dropout, masking from the global RNG (a batch read ahead), evaluations mid-run
    (a base-seed draw each): the same losses and eval losses, and the same RNG state after."""
    pytest.importorskip("transformers")
    theirs = run_script("mlm_dropout", "transformers", tmp_path / "hf", WORDS=WORDS)
    ours = run_script("mlm_dropout", "trainbus", tmp_path / "tb", WORDS=WORDS)
    assert ours["global_step"] == theirs["global_step"] == 6
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["eval_losses"] == pytest.approx(theirs["eval_losses"], rel=1e-5)
    assert torch.equal(ours["rng"], theirs["rng"])


RESUME_AT_EPOCH_END: dict[str, Any] = {
    "max_steps": 6,
    "gradient_accumulation_steps": 2,
    "save_strategy": "steps",
    "save_steps": 3,
    "eval_on_start": True,
    "seed": 11,
}
"""24 samples in batches of 4, two per update: 3 updates an epoch, a checkpoint at its end."""


def _losses(run: Run) -> list[float]:
    return [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry]


def test_resuming_at_an_epoch_boundary_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    """The checkpoint's RNG state is restored after the evaluation on start (which draws) and
    before the next epoch's draw, so the dropout of the resumed steps is the uninterrupted run's."""
    torch.manual_seed(0)
    straight = make_run(tmp_path / "a", train_size=24, **RESUME_AT_EPOCH_END)
    straight.trainer.train()

    torch.manual_seed(0)
    first = make_run(tmp_path / "b", train_size=24, callbacks=[StopAt(3)], **RESUME_AT_EPOCH_END)
    first.trainer.train()
    assert first.trainer.state.global_step == 3
    second = make_run(tmp_path / "b", train_size=24, **RESUME_AT_EPOCH_END)
    second.trainer.train(resume_from_checkpoint=True)

    assert _losses(second) == _losses(straight)
    for name, value in straight.trainer.model.state_dict().items():
        assert torch.equal(second.trainer.model.state_dict()[name], value), name

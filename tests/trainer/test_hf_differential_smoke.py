"""The differential harness itself: a plain fp32 script gives the same numbers on both Trainers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.hf_differential import run_script

pytest.importorskip("transformers")


def test_a_plain_fp32_script_gives_the_same_losses_and_steps(tmp_path: Path) -> None:
    theirs = run_script("smoke_regression", "transformers", tmp_path / "hf")
    ours = run_script("smoke_regression", "trainbus", tmp_path / "tb")
    assert ours["global_step"] == theirs["global_step"] == 8
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)

"""Data and evaluation against transformers: the same script, only the trainer import changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.hf_differential import run_script

pytest.importorskip("transformers")


def _both(name: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        run_script(name, "transformers", tmp_path / "hf"),
        run_script(name, "trainbus", tmp_path / "tb"),
    )


def _assert_same_run(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours["global_step"] == theirs["global_step"] == 8
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["eval_losses"] == pytest.approx(theirs["eval_losses"], rel=1e-5)
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
    assert ours["eval_accuracy"] == theirs["eval_accuracy"]
    assert ours["metric_keys"] == theirs["metric_keys"]
    assert ours["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-5)
    assert ours["test_accuracy"] == theirs["test_accuracy"]
    assert ours["label_ids"].shape == theirs["label_ids"].shape
    np.testing.assert_array_equal(ours["label_ids"], theirs["label_ids"])
    assert ours["predictions"].shape == theirs["predictions"].shape


def test_raw_text_rows_with_a_tokenizer_train_and_evaluate_as_in_transformers(
    tmp_path: Path,
) -> None:
    """Rows of different lengths with ``text``/``idx`` columns and no collator: the tokenizer's
    padding collator is chosen, the raw columns are dropped, and every number matches."""
    theirs, ours = _both("text_classification", tmp_path)
    _assert_same_run(ours, theirs)
    assert ours["collator"] == theirs["collator"] == "DataCollatorWithPadding"
    assert ours["test_keys"] == theirs["test_keys"]
    assert ours["predictions"].shape == (7, 2)
    np.testing.assert_allclose(ours["predictions"], theirs["predictions"], rtol=1e-5)


def test_causal_lm_predictions_of_different_lengths_are_padded_and_joined_as_in_transformers(
    tmp_path: Path,
) -> None:
    """Batches of different lengths, argmax'd by ``preprocess_logits_for_metrics`` and moved to
    NumPy every two batches (``eval_accumulation_steps``), give transformers' arrays: the shorter
    batches' rows padded with -100 to the longest."""
    theirs, ours = _both("causal_lm", tmp_path)
    _assert_same_run(ours, theirs)
    np.testing.assert_array_equal(ours["predictions"], theirs["predictions"])
    padded_rows = (ours["predictions"] == -100).all(axis=1)
    assert not padded_rows.any()  # argmax never gives -100 itself: only padding does
    assert (ours["predictions"][:, -1] == -100).any()  # some batch was shorter than the longest

"""Loss and accounting as transformers computes them: ``num_items_in_batch`` over accumulation
windows, input tokens seen, total flos, and the metrics files of the example scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.hf_differential import WORDS, run_script
from tests.trainer.recording import time_limit  # noqa: F401  (autouse)
from trainbus.trainer import Trainer, TrainingArguments
from trainbus.trainer._accounting import (
    accepts_loss_kwargs,
    count_label_items,
    flops_counter,
    loss_shifts_labels,
    token_counter,
)
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer.testing import TinyRegressor

_RESULT_FILES = ("train_results.json", "eval_results.json", "all_results.json")


def _json_keys(path: Path) -> list[str]:
    return sorted(json.loads(path.read_text(encoding="utf-8")))


# --- differential: a causal LM with gradient accumulation 4 --------------------------------------


def test_a_causal_lm_with_accumulation_matches_transformers_weighted_by_label_tokens(
    tmp_path: Path,
) -> None:
    """GPT-2 with uneven label counts per micro-batch: losses, eval loss, tokens seen, total
    flos and the files the staples write match transformers; the naive mean of micro-batch
    means (the model saying it takes no loss keyword arguments) gives other losses."""
    pytest.importorskip("transformers")
    inputs = {"NAIVE": False, "TOKENS_SEEN": "non_padding", "WORDS": WORDS}
    theirs = run_script("api_causal_lm_staples", "transformers", tmp_path / "hf", **inputs)
    ours = run_script("api_causal_lm_staples", "trainbus", tmp_path / "tb", **inputs)

    assert ours["global_step"] == theirs["global_step"] == 4
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5)
    assert ours["learning_rates"] == pytest.approx(theirs["learning_rates"], rel=1e-12)
    assert len(set(ours["learning_rates"])) > 3  # the cosine restarts really moved the rate
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
    assert ours["total_flos"] == theirs["total_flos"] > 0
    assert ours["tokens_seen"] == theirs["tokens_seen"]
    assert ours["tokens_logged"] == theirs["tokens_logged"]
    assert ours["tokens_seen"] < 16 * 2 * 16  # padding is not counted
    assert ours["log_keys"] == theirs["log_keys"]
    assert sorted(ours["train_metrics"]) == sorted(theirs["train_metrics"])

    written = {*_RESULT_FILES, "trainer_state.json", "model.safetensors", "config.json"}
    assert written <= theirs["files"] and written <= ours["files"]
    for name in (*_RESULT_FILES, "trainer_state.json"):
        assert _json_keys(tmp_path / "tb" / "out" / name) == _json_keys(
            tmp_path / "hf" / "out" / name
        ), name

    naive = run_script(
        "api_causal_lm_staples",
        "trainbus",
        tmp_path / "naive",
        **{
            **inputs,
            "NAIVE": True,
        },
    )
    differences = [abs(a - b) / b for a, b in zip(naive["losses"], ours["losses"], strict=True)]
    assert min(differences) > 1e-2


# --- counting label tokens -----------------------------------------------------------------------


def test_label_tokens_are_counted_over_the_window_without_the_ignored_ones() -> None:
    """-100 is skipped; a causal LM's first position never counts; ``shift_labels`` wins."""
    window = [
        {"labels": torch.tensor([[1, 2, -100], [3, -100, -100]])},
        {"labels": torch.tensor([[4, 5, 6]])},
    ]
    count = count_label_items(window, shift=False)
    assert count is not None and count.dtype == torch.int64 and int(count) == 6
    assert int(count_label_items(window, shift=True) or 0) == 3
    shifted = [{"labels": torch.tensor([[9, 9, 9]]), "shift_labels": torch.tensor([[1, -100]])}]
    assert int(count_label_items(shifted, shift=True) or 0) == 1


@pytest.mark.parametrize(
    "window",
    [[], [{"x": torch.ones(2)}], [{"labels": [1, 2]}], [("not", "a", "mapping")]],
)
def test_windows_without_tensor_labels_are_not_counted(window: list[Any]) -> None:
    """No labels, or labels that are not tensors: ``None`` (the loss is then divided by GA)."""
    assert count_label_items(window, shift=False) is None


def test_loss_keyword_arguments_are_read_from_the_forward_signature_or_the_attribute() -> None:
    """``**kwargs`` in forward means yes; an ``accepts_loss_kwargs`` attribute overrides it."""

    class Kwargs(TinyRegressor):
        def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:  # type: ignore[override]
            return super().forward(x)

    assert not accepts_loss_kwargs(TinyRegressor())
    model = Kwargs()
    assert accepts_loss_kwargs(model)
    model.accepts_loss_kwargs = False
    assert not accepts_loss_kwargs(model)


def test_only_a_decoder_only_language_models_loss_shifts_labels() -> None:
    """``loss_type`` of a causal LM, unless its config says encoder-decoder."""
    model = TinyRegressor()
    assert not loss_shifts_labels(model)
    model.loss_type = "ForCausalLM"
    assert loss_shifts_labels(model)
    model.config.is_encoder_decoder = True  # type: ignore[attr-defined]
    assert not loss_shifts_labels(model)


class MaskedSum(TinyRegressor):
    """Takes loss keyword arguments: one prediction per row, compared with each of the row's
    real labels (not -100); the squared errors are summed and divided by the count given."""

    def forward(  # type: ignore[override]  # adds the loss keyword arguments
        self, x: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        logits = self.body(x).expand(-1, 3)
        out = {"logits": logits}
        if labels is not None:
            errors = ((logits - labels)[labels != -100] ** 2).sum()
            out["loss"] = errors / kwargs["num_items_in_batch"]
        return out


class Rows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Rows whose ``labels`` hold 1 to 3 real values padded with -100 (x is their index)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        labels = torch.full((3,), -100.0)
        labels[: 1 + index % 3] = 1.0
        return {"x": torch.full((4,), float(index)), "labels": labels}


def test_the_loop_passes_each_windows_label_count_to_every_micro_batch(tmp_path: Path) -> None:
    """Batches of 1, GA 4 over 6 rows: windows of 4 and 2 rows; every micro-batch of a window
    receives the same count, the sum of its rows' real labels; the loss is not divided by GA."""
    seen: list[tuple[int, float]] = []

    class Recording(Trainer):
        def training_step(
            self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
        ) -> torch.Tensor:
            loss = super().training_step(model, inputs, num_items_in_batch)
            seen.append((int(num_items_in_batch), float(loss)))
            return loss

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        num_train_epochs=1,
        learning_rate=0.0,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = Recording(
        MaskedSum(dropout=0.0), args, train_dataset=Rows(), launcher=LocalLauncher()
    )
    trainer.train()
    order = trainer.get_train_dataloader().sampler
    assert order is not None
    rows = list(iter(order))
    labels_per_row = [1 + index % 3 for index in rows]
    first, second = sum(labels_per_row[:4]), sum(labels_per_row[4:])
    assert [count for count, _ in seen] == [first] * 4 + [second] * 2
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    sums = [sum(loss for _, loss in seen[:4]), sum(loss for _, loss in seen[4:])]
    assert logged == pytest.approx(sums)


# --- tokens seen and flops -----------------------------------------------------------------------


def test_tokens_seen_count_every_element_or_the_non_padding_ones() -> None:
    """ "all": the main input's elements; "non_padding": the attention mask's sum, else the
    tokens that are not the pad token, else all; "no": nothing is counted at all."""
    model = TinyRegressor()
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    mask = (ids != 0).long()
    assert token_counter("no", model, 0) is None
    count_all = token_counter("all", model, 0)
    non_padding = token_counter("non_padding", model, 0)
    unknown_pad = token_counter("non_padding", model, None)
    assert count_all is not None and non_padding is not None and unknown_pad is not None
    assert count_all({"input_ids": ids, "attention_mask": mask}) == 8
    assert non_padding({"input_ids": ids, "attention_mask": mask}) == 3
    assert non_padding({"input_ids": ids}) == 3
    assert unknown_pad({"input_ids": ids}) == 8
    assert count_all({"x": ids}) == 0  # no main input: nothing counted


def test_flops_come_from_the_model_or_its_parameter_count_or_nothing() -> None:
    """A model's own method first; else 6 x tokens x parameters; else no counter at all."""

    class Own(TinyRegressor):
        def floating_point_ops(self, inputs: Any) -> int:
            return 7

    class Counted(TinyRegressor):
        def num_parameters(self, exclude_embeddings: bool = False) -> int:
            assert exclude_embeddings
            return 10

    own = flops_counter(Own())
    counted = flops_counter(Counted())
    assert own is not None and own({}) == 7.0
    assert counted is not None and counted({"input_ids": torch.zeros(2, 3)}) == 6 * 6 * 10
    assert counted({"x": torch.zeros(2)}) == 0.0
    assert flops_counter(TinyRegressor()) is None

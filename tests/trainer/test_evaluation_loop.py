"""The prediction loop: padded concatenation, accumulation, per-batch metrics, extras, keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from trainbus.trainer import EvalPrediction, Trainer, TrainingArguments
from trainbus.trainer._gather import nested_concat
from trainbus.trainer._launcher import LocalLauncher

LENGTHS = [2, 3, 3, 5, 1, 4, 2]
"""Token counts of the rows; with batches of 2 the batch lengths are 3, 5, 4, 2."""


class Config:
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache"]


class Tagger(nn.Module):
    """Three logits per token; also returns a ``cache`` output, ignored at inference."""

    main_input_name = "input_ids"

    def __init__(self) -> None:
        super().__init__()
        self.config = Config()
        self.embed = nn.Embedding(8, 3)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.embed(input_ids)
        out = {"logits": logits, "cache": torch.zeros(len(input_ids), 7)}
        if labels is not None:
            flat = logits.reshape(-1, 3)
            out = {"loss": nn.functional.cross_entropy(flat, labels.reshape(-1)), **out}
        return out


def rows(lengths: list[int] = LENGTHS) -> list[dict[str, Any]]:
    return [
        {"input_ids": [(i + j) % 8 for j in range(n)], "labels": [(i * j) % 3 for j in range(n)]}
        for i, n in enumerate(lengths)
    ]


def pad(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pads each batch to its own longest row: ids with 0, labels with -100."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = [s["input_ids"] + [0] * (width - len(s["input_ids"])) for s in samples]
    batch = {"input_ids": torch.tensor(ids)}
    if "labels" in samples[0]:
        labels = [s["labels"] + [-100] * (width - len(s["labels"])) for s in samples]
        batch["labels"] = torch.tensor(labels)
    return batch


def make_trainer(tmp_path: Path, **overrides: Any) -> Trainer:
    hooks = {
        key: overrides.pop(key)
        for key in ("compute_metrics", "preprocess_logits_for_metrics")
        if key in overrides
    }
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_eval_batch_size=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **overrides,
    )
    torch.manual_seed(0)
    return Trainer(
        Tagger(), args, data_collator=pad, eval_dataset=rows(), launcher=LocalLauncher(), **hooks
    )


def expected_logits(trainer: Trainer) -> np.ndarray[Any, Any]:
    """Each row's logits, padded with -100 to the longest row of all."""
    out = np.full((len(LENGTHS), max(LENGTHS), 3), -100.0, dtype=np.float32)
    with torch.no_grad():
        for i, row in enumerate(rows()):
            logits = trainer.model.embed(torch.tensor(row["input_ids"]))
            out[i, : len(row["input_ids"])] = logits.numpy()
    return out


def test_predictions_of_batches_of_different_lengths_are_padded_with_minus_100(
    tmp_path: Path,
) -> None:
    """Rows of every batch keep their own values; the width is the longest batch's."""
    trainer = make_trainer(tmp_path)
    output = trainer.predict(rows())
    assert output.predictions.shape == (7, 5, 3)
    want = expected_logits(trainer)
    batch_width = [3, 3, 5, 5, 4, 4, 2]  # each row is padded to its batch's width by the collator
    for i, width in enumerate(batch_width):
        np.testing.assert_allclose(
            output.predictions[i, :width][: LENGTHS[i]], want[i, : LENGTHS[i]]
        )
        assert (output.predictions[i, width:] == -100).all()
    assert output.label_ids.shape == (7, 5)
    assert (output.label_ids[6, 2:] == -100).all()


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_eval_accumulation_steps_give_the_same_arrays(tmp_path: Path, steps: int) -> None:
    """Moving results to NumPy every few batches joins them exactly as at the end."""
    whole = make_trainer(tmp_path).predict(rows())
    parts = make_trainer(tmp_path, eval_accumulation_steps=steps).predict(rows())
    np.testing.assert_array_equal(parts.predictions, whole.predictions)
    np.testing.assert_array_equal(parts.label_ids, whole.label_ids)
    assert parts.metrics["test_loss"] == whole.metrics["test_loss"]


def test_without_concatenation_each_batch_stays_its_own_array(tmp_path: Path) -> None:
    output = make_trainer(tmp_path, eval_do_concat_batches=False).predict(rows())
    assert [p.shape for p in output.predictions] == [(2, 3, 3), (2, 5, 3), (2, 4, 3), (1, 2, 3)]
    assert [len(labels) for labels in output.label_ids] == [2, 2, 2, 1]


def test_the_loss_weighs_every_sample_once(tmp_path: Path) -> None:
    """The last batch holds one sample: its loss counts once, not ``eval_batch_size`` times."""
    trainer = make_trainer(tmp_path)
    batch_losses = []
    with torch.no_grad():
        for start in range(0, 7, 2):
            batch = pad(rows()[start : start + 2])
            batch_losses += [float(trainer.model(**batch)["loss"])] * len(batch["input_ids"])
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(np.mean(batch_losses), rel=1e-6)


def test_preprocess_logits_for_metrics_sees_each_batch_with_its_labels(tmp_path: Path) -> None:
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append((tuple(logits.shape), tuple(labels.shape)))
        return logits.argmax(-1)

    def accuracy(prediction: EvalPrediction) -> dict[str, float]:
        predictions, labels = prediction
        scored = labels != -100
        return {"accuracy": float((predictions[scored] == labels[scored]).mean())}

    trainer = make_trainer(tmp_path, compute_metrics=accuracy, preprocess_logits_for_metrics=argmax)
    metrics = trainer.evaluate()
    assert seen == [
        ((2, 3, 3), (2, 3)),
        ((2, 5, 3), (2, 5)),
        ((2, 4, 3), (2, 4)),
        ((1, 2, 3), (1, 2)),
    ]
    predicted = expected_logits(trainer).argmax(-1)
    hits = [
        predicted[i, j] == row["labels"][j]
        for i, row in enumerate(rows())
        for j in range(len(row["labels"]))
    ]
    assert metrics["eval_accuracy"] == pytest.approx(float(np.mean(hits)))
    assert list(metrics)[:2] == ["eval_loss", "eval_accuracy"]


def test_batch_eval_metrics_calls_compute_metrics_per_batch(tmp_path: Path) -> None:
    """Each batch's tensors are passed as they are; ``compute_result`` is true on the last."""
    calls: list[tuple[tuple[int, ...], bool]] = []

    def count(prediction: EvalPrediction, compute_result: bool) -> dict[str, float]:
        assert isinstance(prediction.predictions, torch.Tensor)
        calls.append((tuple(prediction.label_ids.shape), compute_result))
        return {"batches": float(len(calls))}

    trainer = make_trainer(tmp_path, batch_eval_metrics=True, compute_metrics=count)
    metrics = trainer.evaluate()
    assert calls == [((2, 3), False), ((2, 5), False), ((2, 4), False), ((1, 2), True)]
    assert metrics["eval_batches"] == 4.0
    prediction = trainer.predict(rows())  # prediction still keeps every batch's results
    assert prediction.predictions.shape == (7, 5, 3)


def test_include_for_metrics_passes_inputs_and_losses(tmp_path: Path) -> None:
    got: dict[str, Any] = {}

    def keep(prediction: EvalPrediction) -> dict[str, float]:
        got["inputs"], got["losses"] = prediction.inputs, prediction.losses
        got["unpacked"] = len(list(prediction))
        return {}

    trainer = make_trainer(tmp_path, include_for_metrics=["inputs", "loss"], compute_metrics=keep)
    trainer.evaluate()
    assert got["inputs"].shape == (7, 5)
    assert got["inputs"][6, 2] == -100  # padded like the predictions
    assert got["losses"].shape == (7,)
    assert got["unpacked"] == 4


def test_ignored_outputs_and_loss_only(tmp_path: Path) -> None:
    """The config's ``keys_to_ignore_at_inference`` are left out unless ``ignore_keys`` is
    given; ``prediction_loss_only`` keeps no predictions at all."""
    trainer = make_trainer(tmp_path)
    assert isinstance(trainer.predict(rows()).predictions, np.ndarray)
    both = trainer.predict(rows(), ignore_keys=[])
    assert [p.shape for p in both.predictions] == [(7, 5, 3), (7, 7)]
    only = make_trainer(tmp_path, prediction_loss_only=True).predict(rows())
    assert only.predictions is None and only.label_ids is None
    assert "test_loss" in only.metrics


def test_without_labels_there_is_no_loss(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    output = trainer.predict(
        [{"input_ids": row["input_ids"]} for row in rows()], metric_key_prefix="p"
    )
    assert output.label_ids is None
    assert "p_loss" not in output.metrics and "p_runtime" in output.metrics


def test_an_overridden_prediction_step_is_the_one_used(tmp_path: Path) -> None:
    class Constant(Trainer):
        def prediction_step(
            self,
            model: nn.Module,
            inputs: dict[str, Any],
            prediction_loss_only: bool,
            ignore_keys: list[str] | None = None,
        ) -> tuple[torch.Tensor | None, Any, Any]:
            size = len(inputs["input_ids"])
            return torch.tensor(2.0), torch.ones(size, 1), torch.zeros(size, 1)

    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_eval_batch_size=2
    )
    trainer = Constant(Tagger(), args, data_collator=pad, launcher=LocalLauncher())
    output = trainer.predict(rows())
    assert output.metrics["test_loss"] == 2.0
    assert output.predictions.shape == (7, 1)


def test_a_dict_of_eval_sets_is_evaluated_by_name(tmp_path: Path) -> None:
    """Each set gets its ``eval_<name>_`` keys, and ``get_eval_dataloader`` is asked by name."""
    asked: list[Any] = []

    class Asking(Trainer):
        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            asked.append(eval_dataset)
            return super().get_eval_dataloader(eval_dataset)

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = Asking(
        Tagger(),
        args,
        data_collator=pad,
        eval_dataset={"a": rows(), "b": rows()[:3]},
        launcher=LocalLauncher(),
    )
    metrics = trainer.evaluate(metric_key_prefix="dev")
    assert asked == ["a", "b"]
    assert {"dev_a_loss", "dev_b_loss"} <= set(metrics)
    with pytest.raises(ValueError, match="eval_dataset 'c' names no data set"):
        trainer.get_eval_dataloader("c")


def test_nested_outputs_are_joined_structure_by_structure() -> None:
    first = {"a": torch.zeros(1, 2), "b": (torch.ones(1), torch.ones(1, 1))}
    second = {"a": torch.ones(2, 3), "b": (torch.zeros(2), torch.zeros(2, 1))}
    joined = nested_concat(first, second)
    assert joined["a"].shape == (3, 3) and joined["a"][0, 2] == -100
    assert joined["b"][0].shape == (3,) and joined["b"][1].shape == (3, 1)
    with pytest.raises(TypeError, match="changed structure"):
        nested_concat(first, [torch.zeros(1)])


def test_an_overridden_evaluate_runs_once_per_call(tmp_path: Path) -> None:
    """Opening the run around ``evaluate()`` does not call the override a second time."""
    calls: list[str] = []

    class Counting(Trainer):
        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            calls.append("evaluate")
            return super().evaluate(*args, **kwargs)

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = Counting(
        Tagger(), args, data_collator=pad, eval_dataset=rows(), launcher=LocalLauncher()
    )
    assert "eval_loss" in trainer.evaluate()
    assert calls == ["evaluate"]

"""The model card (``README.md``) written beside a pushed model.

transformers drafts its card from the Hub's metadata and the trainer's history. Ours says what a
reader of a directory or a registry needs without a network: where the model came from, the
training arguments that shaped it, and its last evaluation. The Hub's YAML header carries the
metadata ``create_model_card`` accepts (language, license, tags, ...), so the Hub indexes a card
pushed there as it indexes transformers' own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["CARD_ARGUMENTS", "render_model_card"]

CARD_ARGUMENTS: Final = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "optim",
    "weight_decay",
    "seed",
)
"""The training arguments listed in the card (transformers lists the same kind)."""


def render_model_card(
    model_name: str,
    *,
    commit_message: str,
    global_step: int,
    epoch: float | None,
    arguments: Mapping[str, Any],
    log_history: Sequence[Mapping[str, Any]],
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """The card as Markdown with a YAML header.

    Args:
        model_name: the heading.
        commit_message: why this push happened ("End of training", "Training in progress...").
        global_step: the optimizer steps behind the weights.
        epoch: the epoch reached, if training ran.
        arguments: the training arguments (``TrainingArguments.to_dict()``, secrets masked).
        log_history: ``TrainerState.log_history``; its last evaluation is shown.
        metadata: ``create_model_card``'s keyword arguments (``language``, ``license``,
            ``tags`` ...); ``None`` values are left out.
    """
    header: dict[str, Any] = {"library_name": "transformers", "tags": ["trainbus"]}
    for key, value in (metadata or {}).items():
        if value is None:
            continue
        if key == "tags":
            extra = [value] if isinstance(value, str) else list(value)
            header["tags"] = [*header["tags"], *(t for t in extra if t not in header["tags"])]
        else:
            header[key] = value
    lines = ["---", *(f"{key}: {json.dumps(value)}" for key, value in header.items()), "---", ""]
    lines += [f"# {model_name}", "", f"{commit_message}: step {global_step}", ""]
    if epoch is not None:
        lines[-2] += f", epoch {epoch:g}"
    lines += ["## Training arguments", "", "| argument | value |", "|---|---|"]
    lines += [f"| {key} | {arguments[key]} |" for key in CARD_ARGUMENTS if key in arguments]
    evaluation = next((entry for entry in reversed(log_history) if "eval_loss" in entry), None)
    if evaluation is not None:
        lines += ["", "## Last evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in evaluation.items()]
    return "\n".join(lines) + "\n"

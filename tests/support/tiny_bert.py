"""A tiny BERT classifier and eight pre-tokenized rows, built from a config (no download)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

__all__ = ["tiny_bert"]


def tiny_bert(*, layers: int = 1, dropout: float | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """A seeded ``BertForSequenceClassification`` (16 wide, ``layers`` deep) and its rows.

    ``dropout`` sets both of BERT's dropout rates; ``None`` keeps the config's default. Skips the
    test when transformers is not installed.
    """
    transformers = pytest.importorskip("transformers")
    rates = (
        {}
        if dropout is None
        else {
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
        }
    )
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        **rates,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(1)
    rows = [
        {"input_ids": torch.randint(5, 32, (8,), generator=generator), "labels": i % 2}
        for i in range(8)
    ]
    return model, rows

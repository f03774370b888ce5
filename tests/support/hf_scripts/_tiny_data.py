"""The tiny model and data the differential scripts share (a helper, not a script).

A one-layer BERT classifier initialised under a fixed seed, and rows of random token ids
with alternating labels: no tokenizer, no download, the same tensors in both runs.
"""

import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_config(vocab_size=64):
    """A BERT config small enough to train a few steps on a CPU in a second."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )


def tiny_classifier(vocab_size=64, seed=0):
    """A two-label classifier whose weights are drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(vocab_size))


def random_rows(count, vocab_size=64):
    """``count`` rows of 8 token ids (none of the 5 special ones), labels 0, 1, 0, ..."""
    generator = torch.Generator().manual_seed(1)
    return [
        {"input_ids": torch.randint(5, vocab_size, (8,), generator=generator), "labels": i % 2}
        for i in range(count)
    ]

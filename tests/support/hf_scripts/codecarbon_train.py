"""Train then evaluate a tiny classifier with report_to=["codecarbon"]."""

import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from transformers import Trainer, TrainingArguments  # trainer-import

config = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)
torch.manual_seed(0)
model = BertForSequenceClassification(config)
generator = torch.Generator().manual_seed(1)
rows = [
    {"input_ids": torch.randint(5, 64, (8,), generator=generator), "labels": i % 2}
    for i in range(16)
]
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=8,
    max_steps=4,
    logging_steps=2,
    save_strategy="no",
    report_to=["codecarbon"],
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8])
began = time.perf_counter()
trainer.train()
train_seconds = time.perf_counter() - began
trainer.evaluate()
RESULT = {"train_seconds": train_seconds}

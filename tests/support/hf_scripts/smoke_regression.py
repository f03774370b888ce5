"""The smallest script: a tiny BERT classifier on pre-tokenized rows, fp32, no tokenizer."""

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
    for i in range(32)
]
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=8,
    num_train_epochs=2,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:12])
output = trainer.train()
metrics = trainer.evaluate()
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "eval_loss": metrics["eval_loss"],
}

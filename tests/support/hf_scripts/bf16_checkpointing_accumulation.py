"""A tiny BERT classifier in bf16 autocast, with gradient checkpointing and accumulation.

ACCUMULATION (set by the test) is the number of micro-batches per optimizer step.
"""

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
from transformers import DataCollatorWithPadding

from transformers import Trainer, TrainingArguments  # trainer-import

tokenizer = BertTokenizerFast(vocab=str(VOCAB))  # VOCAB: written by the harness
words = [line for line in VOCAB.read_text().split() if not line.startswith("[")]
generator = torch.Generator().manual_seed(2)
rows = []
for _ in range(32):
    length = int(torch.randint(3, 10, (1,), generator=generator))
    picked = [words[int(i)] for i in torch.randint(len(words), (length,), generator=generator)]
    row = dict(tokenizer(" ".join(picked)))
    row["labels"] = int(any(word in ("good", "great", "happy") for word in picked))
    rows.append(row)
config = BertConfig(
    vocab_size=tokenizer.vocab_size,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
    num_labels=2,
)
torch.manual_seed(0)
model = BertForSequenceClassification(config)
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    bf16=True,
    gradient_checkpointing=True,
    gradient_accumulation_steps=ACCUMULATION,
    per_device_train_batch_size=8 // ACCUMULATION,
    per_device_eval_batch_size=4,
    learning_rate=1e-3,
    num_train_epochs=2,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=rows,
    eval_dataset=rows[:12],
    data_collator=DataCollatorWithPadding(tokenizer),
)
output = trainer.train()
metrics = trainer.evaluate()
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "grad_norms": [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e],
    "eval_loss": metrics["eval_loss"],
    "checkpointing": model.is_activation_checkpointing,
    "weight_dtype": str(next(model.parameters()).dtype),
}

"""Text classification from raw dict rows: a tokenizer and no collator, fp32.

Each row is tokenized on its own (no padding) and keeps its raw columns (``text``, ``idx``) next
to ``label``: the Trainer must pick the padding collator for the tokenizer and drop the columns the
model's ``forward`` does not take.
"""

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from transformers import Trainer, TrainingArguments  # trainer-import

tokenizer = BertTokenizerFast(
    vocab=str(VOCAB)
)  # VOCAB: written by the harness; vocab_file= is ignored in 5.x
words = [line for line in VOCAB.read_text().split() if not line.startswith("[")]
generator = torch.Generator().manual_seed(3)


def make_rows(count, offset):
    rows = []
    for i in range(count):
        length = 2 + int(torch.randint(0, 7, (1,), generator=generator))
        picks = torch.randint(0, len(words), (length,), generator=generator).tolist()
        text = " ".join(words[p] for p in picks)
        label = int("good" in text or "great" in text or length % 3 == 0)
        rows.append({"text": text, "idx": offset + i, "label": label, **tokenizer(text)})
    return rows


config = BertConfig(
    vocab_size=tokenizer.vocab_size,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    num_labels=2,
)
torch.manual_seed(0)
model = BertForSequenceClassification(config)


def accuracy(prediction):
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=4,
    per_device_eval_batch_size=3,
    num_train_epochs=2,
    learning_rate=1e-3,
    logging_steps=1,
    eval_strategy="epoch",
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=make_rows(16, 0),
    eval_dataset=make_rows(10, 100),
    processing_class=tokenizer,
    compute_metrics=accuracy,
)
output = trainer.train()
metrics = trainer.evaluate()
prediction = trainer.predict(make_rows(7, 200))
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
    "eval_loss": metrics["eval_loss"],
    "eval_accuracy": metrics["eval_accuracy"],
    "metric_keys": sorted(metrics),
    "collator": type(trainer.data_collator).__name__,
    "predictions": prediction.predictions,
    "label_ids": prediction.label_ids,
    "test_loss": prediction.metrics["test_loss"],
    "test_accuracy": prediction.metrics["test_accuracy"],
    "test_keys": sorted(prediction.metrics),
}

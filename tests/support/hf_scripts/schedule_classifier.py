"""A text classifier with the usual pieces and a chosen learning-rate schedule.

Tokenizer, padding collator, tiny BERT, weight decay, warm-up, evaluation every few steps. The
harness sets LR_SCHEDULER_TYPE and LR_SCHEDULER_KWARGS (and WORKDIR, VOCAB).
"""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DataCollatorWithPadding,
)

from transformers import Trainer, TrainingArguments  # trainer-import

WORDS = ["good", "bad", "film", "plot", "was", "very", "not", "great", "dull", "story", "the"]
tokenizer = BertTokenizerFast(vocab=str(VOCAB))  # VOCAB: written by the harness
generator = torch.Generator().manual_seed(3)


def sentence(index):
    picks = torch.randint(0, len(WORDS), (3 + index % 5,), generator=generator).tolist()
    return " ".join(WORDS[i] for i in picks)


texts = [sentence(i) for i in range(40)]
labels = [int("good" in text or "great" in text) for text in texts]
rows = [{**tokenizer(text), "labels": label} for text, label in zip(texts, labels, strict=True)]
config = BertConfig(
    vocab_size=tokenizer.vocab_size,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    num_labels=2,
)
torch.manual_seed(0)
model = BertForSequenceClassification(config)
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=4,
    per_device_eval_batch_size=8,
    num_train_epochs=2,
    learning_rate=5e-3,
    weight_decay=0.01,
    warmup_steps=3,
    lr_scheduler_type=LR_SCHEDULER_TYPE,  # set by the harness
    lr_scheduler_kwargs=LR_SCHEDULER_KWARGS,  # set by the harness
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=4,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=rows[:32],
    eval_dataset=rows[32:],
    data_collator=DataCollatorWithPadding(tokenizer),
    processing_class=tokenizer,
)
output = trainer.train()
history = trainer.state.log_history
RESULT = {
    "global_step": output.global_step,
    "losses": [entry["loss"] for entry in history if "loss" in entry],
    "learning_rates": [entry["learning_rate"] for entry in history if "learning_rate" in entry],
    "eval_losses": [entry["eval_loss"] for entry in history if "eval_loss" in entry],
    "train_loss": output.training_loss,
    "param_groups": [len(group["params"]) for group in trainer.optimizer.param_groups],
}

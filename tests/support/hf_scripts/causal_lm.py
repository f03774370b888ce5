"""A tiny causal LM with the language-modeling collator; evaluation over batches of mixed length.

Rows are tokenized one by one (no padding), so each evaluation batch has its own length: the
predictions (argmax'd by ``preprocess_logits_for_metrics``) and labels are padded with -100 to
the longest batch and concatenated, also when ``eval_accumulation_steps`` moves them to the CPU
part by part.
"""

import torch
from transformers import (
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
)

from transformers import Trainer, TrainingArguments  # trainer-import

tokenizer = BertTokenizerFast(
    vocab=str(VOCAB)
)  # VOCAB: written by the harness; vocab_file= is ignored in 5.x
words = [line for line in VOCAB.read_text().split() if not line.startswith("[")]
generator = torch.Generator().manual_seed(5)


def make_rows(count):
    rows = []
    for _ in range(count):
        length = 1 + int(torch.randint(0, 9, (1,), generator=generator))
        picks = torch.randint(0, len(words), (length,), generator=generator).tolist()
        text = " ".join(words[p] for p in picks)
        rows.append({"text": text, **tokenizer(text, return_token_type_ids=False)})
    return rows


config = GPT2Config(
    vocab_size=tokenizer.vocab_size,
    n_positions=32,
    n_embd=16,
    n_layer=1,
    n_head=2,
    pad_token_id=tokenizer.pad_token_id,
)
torch.manual_seed(0)
model = GPT2LMHeadModel(config)


def argmax_logits(logits, labels):
    return logits.argmax(dim=-1)


def next_token_accuracy(prediction):
    predictions, labels = prediction
    predictions, labels = predictions[:, :-1], labels[:, 1:]
    scored = labels != -100
    return {"accuracy": float((predictions[scored] == labels[scored]).mean())}


args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=4,
    per_device_eval_batch_size=3,
    num_train_epochs=2,
    learning_rate=3e-3,
    logging_steps=1,
    eval_strategy="epoch",
    eval_accumulation_steps=2,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    train_dataset=make_rows(16),
    eval_dataset=make_rows(11),
    processing_class=tokenizer,
    compute_metrics=next_token_accuracy,
    preprocess_logits_for_metrics=argmax_logits,
)
output = trainer.train()
metrics = trainer.evaluate()
prediction = trainer.predict(make_rows(8))
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
    "eval_loss": metrics["eval_loss"],
    "eval_accuracy": metrics["eval_accuracy"],
    "metric_keys": sorted(metrics),
    "predictions": prediction.predictions,
    "label_ids": prediction.label_ids,
    "test_loss": prediction.metrics["test_loss"],
    "test_accuracy": prediction.metrics["test_accuracy"],
}

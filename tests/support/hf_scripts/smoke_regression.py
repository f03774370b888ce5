"""The smallest script: a tiny BERT classifier on pre-tokenized rows, fp32, no tokenizer."""

from _tiny_data import random_rows, tiny_classifier

from transformers import Trainer, TrainingArguments  # trainer-import

model = tiny_classifier()
rows = random_rows(32)
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

"""report_to=["dvclive"]: train (with evaluations and a checkpoint), then evaluate(), then
predict(), inside whatever DVC repository the harness made WORKDIR. The final model is saved at
train end from a callback into ``out/last``, as transformers' own DVCLiveCallback does."""

from _tiny_data import random_rows, tiny_classifier

from transformers import Trainer, TrainerCallback, TrainingArguments  # trainer-import

model = tiny_classifier()
rows = random_rows(16)
args = TrainingArguments(
    output_dir="out",
    per_device_train_batch_size=4,
    max_steps=4,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=2,
    save_strategy="steps",
    save_steps=4,
    report_to=["dvclive"],
    use_cpu=True,
    disable_tqdm=True,
)


class SaveLast(TrainerCallback):
    """Our trainer publishes the model a callback saves inside the run (``SAVE_LAST``: only
    for ours; transformers' DVCLiveCallback saves ``out/last`` itself)."""

    trainer = None

    def on_train_end(self, args, state, control, **kwargs):
        if SAVE_LAST:  # SAVE_LAST: set by the test
            self.trainer.save_model("out/last")


callback = SaveLast()
trainer = Trainer(
    model=model, args=args, train_dataset=rows, eval_dataset=rows[:8], callbacks=[callback]
)
callback.trainer = trainer
trainer.train()
trainer.evaluate()
trainer.predict(rows[:8])
RESULT = {"log_history": list(trainer.state.log_history)}

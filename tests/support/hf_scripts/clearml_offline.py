"""ClearML in offline mode: train with evaluations, then evaluate() and predict() again.

Runs in a child process per flavour (the SDK keeps one task per process), with
``report_to=["clearml"]`` and ``CLEARML_OFFLINE_MODE=1`` in the environment.
"""

from _tiny_data import random_rows, tiny_classifier

from transformers import Trainer, TrainingArguments  # trainer-import

model = tiny_classifier()
rows = random_rows(16)
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=4,
    num_train_epochs=2,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=4,
    save_strategy=SAVE_STRATEGY,  # SAVE_STRATEGY: set by the harness
    save_steps=4,
    save_total_limit=1,
    report_to=["clearml"],
    use_cpu=True,
    disable_tqdm=True,
    seed=0,
)
trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8])
output = trainer.train()
trainer.evaluate()
trainer.predict(rows[:8])
RESULT = {"global_step": output.global_step}

"""Tiny BERT reported to MLflow: train with checkpoints, then evaluate and predict.

The harness sets ``MLFLOW_TRACKING_URI`` (and ``HF_MLFLOW_LOG_ARTIFACTS``) in the environment;
the test reads the store back with MLflow's own client.
"""

from _tiny_data import random_rows, tiny_classifier

from transformers import Trainer, TrainingArguments  # trainer-import

model = tiny_classifier(vocab_size=32)
rows = random_rows(8, vocab_size=32)
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    run_name="tiny-mlflow",
    per_device_train_batch_size=4,
    num_train_epochs=2,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=2,
    save_strategy="steps",
    save_steps=2,
    report_to=["mlflow"],
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:4])
output = trainer.train()
trainer.evaluate()
trainer.predict(rows[:4])
RESULT = {"global_step": output.global_step}

"""Train then evaluate a tiny classifier with report_to=["codecarbon"]."""

import time

from _tiny_data import random_rows, tiny_classifier

from transformers import Trainer, TrainingArguments  # trainer-import

model = tiny_classifier()
rows = random_rows(16)
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

"""Train, evaluate and predict a tiny classifier with report_to=["swanlab"], SwanLab offline.

``PRESTART`` (set by the test) starts the SwanLab run in project ``PROJECT`` before training, as a
user would: transformers' own callback cannot start one itself with SwanLab 0.8 or later (it
calls ``swanlab.get_run()``, which raises when no run is active), and it reuses an active run.
"""

import os

import swanlab
from _tiny_data import random_rows, tiny_classifier

from transformers import Trainer, TrainingArguments  # trainer-import

model = tiny_classifier()
rows = random_rows(16)
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    run_name="tiny-swan",
    per_device_train_batch_size=8,
    max_steps=4,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=2,
    save_strategy="no",
    report_to=["swanlab"],
    use_cpu=True,
    disable_tqdm=True,
)
if PRESTART:  # set by the test
    swanlab.init(
        project=PROJECT,
        name=args.run_name,
        mode="offline",
        log_dir=os.environ["SWANLAB_LOG_DIR"],
    )
trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8])
trainer.train()
trainer.evaluate()
trainer.predict(rows[:8])
if swanlab.has_run():
    swanlab.finish()
RESULT = {}

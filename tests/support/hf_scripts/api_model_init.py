"""model_init, compute_loss_func and a training_step override on a tiny BERT classifier.

Default dropout (0.1), gradient accumulation 2 over 20 rows in batches of 8 (windows of 16 and 4
labels), trained twice: model_init builds a fresh model under the seed at every train(), so the
second run repeats the first. preprocess_logits_for_metrics keeps only each batch's argmax, so
compute_metrics receives class ids, not logits.
"""

import torch
from torch.nn import functional
from _tiny_data import tiny_config
from transformers import BertForSequenceClassification

from transformers import Trainer, TrainingArguments  # trainer-import

config = tiny_config()
TRIALS = []
STEPS = []


def model_init(trial):
    TRIALS.append(trial)
    return BertForSequenceClassification(config)


def summed_cross_entropy(outputs, labels, num_items_in_batch=None):
    loss = functional.cross_entropy(outputs["logits"], labels, reduction="sum")
    return loss / num_items_in_batch


def argmax(logits, labels):
    return logits.argmax(-1)


def accuracy(prediction):
    assert prediction.predictions.ndim == 1  # already reduced by argmax()
    return {"accuracy": float((prediction.predictions == prediction.label_ids).mean())}


class StepRecordingTrainer(Trainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        STEPS.append((int(num_items_in_batch), float(loss)))
        return loss


generator = torch.Generator().manual_seed(1)
rows = [
    {"input_ids": torch.randint(5, 64, (8,), generator=generator), "labels": i % 3 % 2}
    for i in range(20)
]
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=8,
    gradient_accumulation_steps=2,
    num_train_epochs=2,
    learning_rate=1e-3,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=2,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = StepRecordingTrainer(
    model_init=model_init,
    args=args,
    train_dataset=rows,
    eval_dataset=rows[:12],
    compute_loss_func=summed_cross_entropy,
    compute_metrics=accuracy,
    preprocess_logits_for_metrics=argmax,
)
first = trainer.train(trial={"run": 1})
first_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
first_steps = list(STEPS)
second = trainer.train(trial={"run": 2})
metrics = trainer.evaluate()
RESULT = {
    "global_step": second.global_step,
    "trials": TRIALS,
    "first_losses": first_losses,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
    "eval_loss": metrics["eval_loss"],
    "accuracy": metrics["eval_accuracy"],
    "first_steps": first_steps,
    "steps": STEPS[len(first_steps) :],
    "train_loss": (first.training_loss, second.training_loss),
}

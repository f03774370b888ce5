"""A tiny BERT classifier with a tokenizer that saves checkpoints and may resume from one.

Inputs (globals set by the harness): ``MAX_STEPS``, ``SAVE_STEPS``, ``RESUME`` (a checkpoint
directory or ``None``) and ``WEIGHT_DECAY``. ``RESULT`` records, by parameter name (so that
optimizers with other parameter groups compare): the optimizer state and learning rates at
``on_train_begin`` and at each ``on_save``, the generator states at each save and at the first
``on_step_begin``, the losses by step and the final weights. A callback draws from every
generator after each step, as data augmentation would, so the generator states at a save differ
from the freshly seeded ones and a resume that did not restore them shows.
"""

import random

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DataCollatorWithPadding,
)

from transformers import Trainer, TrainerCallback, TrainingArguments  # trainer-import

# vocab= (transformers 5 ignores the older vocab_file= and builds an empty vocabulary)
tokenizer = BertTokenizerFast(vocab=str(VOCAB))  # VOCAB, WORDS and the inputs: set by the harness
config = BertConfig(
    vocab_size=len(tokenizer),
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)
torch.manual_seed(0)
model = BertForSequenceClassification(config)
picker = random.Random(3)
sentences = [" ".join(picker.choices(WORDS, k=picker.randint(3, 9))) for _ in range(24)]
rows = [{**tokenizer(text), "labels": i % 2} for i, text in enumerate(sentences)]


def by_name(optimizer):
    """Optimizer state and learning rate per parameter name, whatever the groups."""
    names = {id(param): name for name, param in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            out[names[id(param)]] = {
                "lr": group["lr"],
                "initial_lr": group.get("initial_lr"),
                "weight_decay": group["weight_decay"],
                **{key: value.detach().clone() for key, value in state.items()},
            }
    return out


def generators():
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "cpu": torch.random.get_rng_state().clone(),
    }


class Probe(TrainerCallback):
    def __init__(self):
        self.first_step_rng = None
        self.at_begin = {}
        self.at_save = {}

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.at_begin = {
            "global_step": state.global_step,
            "optimizer": by_name(optimizer),
            "scheduler_last_epoch": lr_scheduler.last_epoch,
        }

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_rng is None:
            self.first_step_rng = generators()

    def on_step_end(self, args, state, control, **kwargs):
        torch.rand(3)
        np.random.rand(3)
        random.random()

    def on_save(self, args, state, control, optimizer=None, **kwargs):
        self.at_save[state.global_step] = {"optimizer": by_name(optimizer), "rng": generators()}


probe = Probe()
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),
    per_device_train_batch_size=4,
    max_steps=MAX_STEPS,
    save_steps=SAVE_STEPS,
    logging_steps=1,
    weight_decay=WEIGHT_DECAY,
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=rows,
    processing_class=tokenizer,
    data_collator=DataCollatorWithPadding(tokenizer),
    callbacks=[probe],
)
output = trainer.train(resume_from_checkpoint=RESUME)
trainer.save_model(str(WORKDIR / "out" / "final"))
RESULT = {
    "global_step": output.global_step,
    "losses": {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e},
    "learning_rates": {
        e["step"]: e["learning_rate"] for e in trainer.state.log_history if "loss" in e
    },
    "at_begin": probe.at_begin,
    "at_save": probe.at_save,
    "first_step_rng": probe.first_step_rng,
    "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
}

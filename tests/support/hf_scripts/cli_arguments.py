"""A script in the style of transformers' examples: HfArgumentParser reads TrainingArguments from
a command line (``ARGV``, set by the test), the data is prepared under ``main_process_first``,
the log level comes from ``get_process_log_level``, and a tiny BERT trains with evaluations."""

import logging

from _tiny_data import random_rows, tiny_classifier
from transformers import HfArgumentParser

from transformers import Trainer, TrainingArguments  # trainer-import

parser = HfArgumentParser(TrainingArguments)
(training_args,) = parser.parse_args_into_dataclasses(ARGV)  # ARGV: set by the test
logger = logging.getLogger("cli_arguments")
logger.setLevel(training_args.get_process_log_level())

model = tiny_classifier(seed=training_args.seed)
with training_args.main_process_first(desc="building the data set"):
    rows = random_rows(48)
trainer = Trainer(model=model, args=training_args, train_dataset=rows, eval_dataset=rows[:16])
output = trainer.train()
history = trainer.state.log_history
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in history if "loss" in e],
    "eval_losses": [e["eval_loss"] for e in history if "eval_loss" in e],
    "learning_rates": [e["learning_rate"] for e in history if "learning_rate" in e],
    "arguments": {k: v for k, v in training_args.to_dict().items() if k != "report_to"},
    "log_level": training_args.get_process_log_level(),
}

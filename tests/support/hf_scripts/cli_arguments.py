"""A script in the style of transformers' examples: HfArgumentParser reads TrainingArguments from
a command line (``ARGV``, set by the test), the data is prepared under ``main_process_first``,
the log level comes from ``get_process_log_level``, and a tiny BERT trains with evaluations."""

import logging

import torch
from transformers import BertConfig, BertForSequenceClassification, HfArgumentParser

from transformers import Trainer, TrainingArguments  # trainer-import

parser = HfArgumentParser(TrainingArguments)
(training_args,) = parser.parse_args_into_dataclasses(ARGV)  # ARGV: set by the test
logger = logging.getLogger("cli_arguments")
logger.setLevel(training_args.get_process_log_level())

config = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)
torch.manual_seed(training_args.seed)
model = BertForSequenceClassification(config)
with training_args.main_process_first(desc="building the data set"):
    generator = torch.Generator().manual_seed(1)
    rows = [
        {"input_ids": torch.randint(5, 64, (8,), generator=generator), "labels": i % 2}
        for i in range(48)
    ]
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

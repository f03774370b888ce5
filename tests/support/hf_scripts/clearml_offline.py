"""ClearML in offline mode: train with evaluations, then evaluate() and predict() again.

Runs in a child process per flavour (the SDK keeps one task per process), with
``report_to=["clearml"]`` and ``CLEARML_OFFLINE_MODE=1`` in the environment.
"""

import torch
from transformers import BertConfig, BertForSequenceClassification

from transformers import Trainer, TrainingArguments  # trainer-import

config = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)
torch.manual_seed(0)
model = BertForSequenceClassification(config)
generator = torch.Generator().manual_seed(1)
rows = [
    {"input_ids": torch.randint(5, 64, (8,), generator=generator), "labels": i % 2}
    for i in range(16)
]
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

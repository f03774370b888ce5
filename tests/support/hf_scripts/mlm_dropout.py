"""A tiny masked LM with default dropout, masking drawn from the global RNG, evaluated mid-run.

Every draw from the global RNG matters here: the collator's masking (one batch read ahead of the
one trained), the dropout of each forward pass, and the loaders' base-seed draw at every epoch
and every evaluation. Gradient accumulation 2 over 18 rows in batches of 4 (a short last window).
"""

import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast
from transformers import DataCollatorForLanguageModeling

from transformers import Trainer, TrainingArguments  # trainer-import

tokenizer = BertTokenizerFast(vocab=str(VOCAB))  # VOCAB: written by the harness
words = list(WORDS)  # WORDS: set by the test
generator = torch.Generator().manual_seed(5)
texts = [
    " ".join(words[k] for k in torch.randint(0, len(words), (6,), generator=generator).tolist())
    for _ in range(18)
]
rows = [dict(tokenizer(text)) for text in texts]
collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
config = BertConfig(
    vocab_size=tokenizer.vocab_size,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
)
torch.manual_seed(0)
model = BertForMaskedLM(config)
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=4,
    per_device_eval_batch_size=8,
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
trainer = Trainer(
    model=model, args=args, data_collator=collator, train_dataset=rows, eval_dataset=rows[:8]
)
output = trainer.train()
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
    "rng": torch.get_rng_state(),
}

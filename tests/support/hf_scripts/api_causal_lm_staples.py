"""A tiny GPT-2 trained with gradient accumulation 4, then the example scripts' staples.

Sentences of 2 to 9 words, padded to 16 tokens, batches of 2: every micro-batch holds a different
number of label tokens, so weighting each by ``num_items_in_batch`` gives another loss than the
mean of the micro-batches' means. Default dropout (0.1). Tokens seen are counted
(``TOKENS_SEEN``: set by the test); ``NAIVE=True`` turns the weighting off (the model then says it
takes no loss keyword arguments). The schedule is cosine with two restarts after one warm-up
step. After training: log_metrics, save_metrics, save_model and
save_state, as the transformers examples end.
"""

import torch
from transformers import BertTokenizerFast, DataCollatorForLanguageModeling, GPT2Config
from transformers import GPT2LMHeadModel

from transformers import Trainer, TrainingArguments  # trainer-import

tokenizer = BertTokenizerFast(vocab=str(VOCAB))  # VOCAB: written by the harness
words = list(WORDS)  # WORDS: set by the test
generator = torch.Generator().manual_seed(3)
texts = []
for _ in range(16):
    length = 2 + int(torch.randint(0, 8, (1,), generator=generator))
    picks = torch.randint(0, len(words), (length,), generator=generator).tolist()
    texts.append(" ".join(words[k] for k in picks))
rows = [dict(tokenizer(text)) for text in texts]
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=16)

config = GPT2Config(
    vocab_size=tokenizer.vocab_size,
    n_positions=16,
    n_embd=16,
    n_layer=1,
    n_head=2,
    pad_token_id=tokenizer.pad_token_id,
)
torch.manual_seed(0)
model = GPT2LMHeadModel(config)
if NAIVE:  # NAIVE: set by the test
    model.accepts_loss_kwargs = False
args = TrainingArguments(
    output_dir=str(WORKDIR / "out"),  # WORKDIR: set by the harness
    per_device_train_batch_size=2,
    per_device_eval_batch_size=4,
    gradient_accumulation_steps=4,
    num_train_epochs=2,
    learning_rate=1e-3,
    lr_scheduler_type="cosine_with_restarts",
    lr_scheduler_kwargs={"num_cycles": 2},
    warmup_steps=1,
    logging_steps=1,
    save_strategy="no",
    include_num_input_tokens_seen=TOKENS_SEEN,  # TOKENS_SEEN: set by the test
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    data_collator=collator,
    train_dataset=rows,
    eval_dataset=rows[:8],
    processing_class=tokenizer,
)
output = trainer.train()
train_metrics = output.metrics
trainer.log_metrics("train", train_metrics)
trainer.save_metrics("train", train_metrics)
trainer.save_model()
trainer.save_state()
eval_metrics = trainer.evaluate()
trainer.log_metrics("eval", eval_metrics)
trainer.save_metrics("eval", eval_metrics)
RESULT = {
    "global_step": output.global_step,
    "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    "learning_rates": [e["learning_rate"] for e in trainer.state.log_history if "loss" in e],
    "train_loss": output.training_loss,
    "eval_loss": eval_metrics["eval_loss"],
    "total_flos": trainer.state.total_flos,
    "tokens_seen": trainer.state.num_input_tokens_seen,
    "tokens_logged": [e["num_input_tokens_seen"] for e in trainer.state.log_history if "loss" in e],
    "log_keys": [sorted(e) for e in trainer.state.log_history],
    "train_metrics": dict(train_metrics),
}

"""A tiny Trainer run on the demo's synthetic repeated bytes (a few seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from circuit_stats.demo.train import demo_config, synthetic_batch

# Cheap repeat-protocol options that fit the byte vocabulary the demo data uses.
OPTIONS = dict(n_sequences=8, seq_len=16, vocab_range=(32, 127))


class RepeatedBytes(torch.utils.data.Dataset):
    def __init__(self, n: int = 48, seq_len: int = 32, seed: int = 1):
        self.ids = synthetic_batch(torch.Generator().manual_seed(seed), n, seq_len)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_training_model(seed: int = 0):
    """The demo architecture with dropout (so training consumes the RNG every step), training
    with sdpa attention, in train mode."""
    from transformers import GPTNeoXForCausalLM

    config = demo_config()
    config.hidden_dropout = config.attention_dropout = 0.1
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    model.set_attn_implementation("sdpa")
    return model.train()


def make_trainer(out: Path, *, max_steps: int = 6, save_steps: int = 2, model=None, callbacks=(),
                 seed: int = 0, lr: float = 1e-3):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8,
                             learning_rate=lr, save_steps=save_steps, logging_steps=1, report_to=[],
                             use_cpu=True, seed=seed, data_seed=seed, disable_tqdm=True,
                             log_level="error")
    return Trainer(model=model if model is not None else tiny_training_model(seed), args=args,
                   train_dataset=RepeatedBytes(), callbacks=list(callbacks))


def train_with_callback(out: Path, *, every: int = 2, resume: Optional[str] = None, **trainer_kw):
    from circuit_stats.training import CircuitStatsCallback

    trainer = make_trainer(out, **trainer_kw)
    callback = CircuitStatsCallback(every=every, **OPTIONS).attach(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback

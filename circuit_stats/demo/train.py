"""Train the bundled demo series: a tiny GPT-NeoX (Pythia architecture) on synthetic byte text
in which induction heads form part-way through training.

    python -m circuit_stats.demo.train --out circuit_stats/data/demo_series

Data: each row is a random segment of 8-32 printable-ASCII bytes repeated to fill the row. After
the first period every token is predictable, but only by a model that finds the previous
occurrence of the current token and reads what followed it (an induction circuit: a
previous-token head in layer 0 composing with an induction head in layer 1). With the defaults
(seed 0, lr 1e-3, one CPU thread, about 90 s) the loss on repeated tokens stays near the unigram
level until step ~1000 and collapses by ~1200: the induction phase change. Checkpoints are
``checkpoint-{step}`` folders (``save_pretrained``, the byte-level tokenizer of
``circuit_stats.tokenization`` and a Trainer-style ``trainer_state.json``),
stored in float16, dense around the transition.

The run is watched live with :class:`circuit_stats.training.Monitor` (every 10 steps by default,
``--every``): the table goes to ``<out>_live/results.parquet`` (the bundled
``circuit_stats/data/demo_series_live``), in the checkpoint-scan format, so the induction onset is
located to 10 steps rather than to the 50-step spacing of the checkpoints. The monitor does not
perturb training: the checkpoints are the same bytes with or without it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ..models.families import tiny_pythia_config
from ..tokenization import write_byte_tokenizer

SEQ_LEN = 96
BATCH = 32
LOW, HIGH = 32, 127  # printable ASCII


def demo_config():
    """2 layers x 4 heads x 16 dims, byte vocabulary; rotary on 25% of head dims, parallel residual."""
    return tiny_pythia_config(vocab_size=256, hidden=64, layers=2, heads=4, intermediate_size=128)


def synthetic_batch(g: torch.Generator, batch: int = BATCH, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """Rows of a random 8-32 byte segment repeated to ``seq_len``."""
    ids = torch.randint(LOW, HIGH, (batch, seq_len), generator=g)
    for b in range(batch):
        period = int(torch.randint(8, 33, (1,), generator=g))
        ids[b] = ids[b, :period].repeat(seq_len // period + 1)[:seq_len]
    return ids


def default_schedule(total: int = 1600) -> list[int]:
    """Sparse early, every 50 steps through the transition window, then every 100: ~26."""
    steps = [0, 50, 100, 200, 300, 400, 500, 600, 700, 800]
    steps += list(range(850, 1300, 50)) + list(range(1300, total + 1, 100))
    return sorted(s for s in set(steps) if s <= total)


MONITOR_EVERY = 10
MODEL_NAME = "circuit-stats demo (tiny GPT-NeoX)"


def live_dir(out: Path) -> Path:
    """Where the live table of a run saving checkpoints to ``out`` goes: ``<out>_live``."""
    out = Path(out)
    return out.parent / f"{out.name}_live"


def train(out: Path, steps: int = 1600, schedule=None, seed: int = 0, lr: float = 1e-3, log=print,
          monitor_every: int = MONITOR_EVERY, live_out=None) -> None:
    """Train and save the checkpoints to ``out``; with ``monitor_every`` > 0 also score every head
    every ``monitor_every`` steps into ``live_out`` (default ``live_dir(out)``)."""
    from transformers import GPTNeoXForCausalLM

    from ..training import Monitor
    from .series import DEMO_REPEAT_OPTIONS

    schedule = sorted(set(schedule or default_schedule(steps)))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = GPTNeoXForCausalLM(demo_config())
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    out = Path(out)
    live_out = Path(live_out) if live_out is not None else live_dir(out)
    for d in (out, live_out) if monitor_every else (out,):
        if d.exists():
            shutil.rmtree(d)
    out.mkdir(parents=True)
    monitor = None
    if monitor_every:
        monitor = Monitor(model, every=monitor_every, out=live_out, model_name=MODEL_NAME,
                          tokens_per_step=BATCH * SEQ_LEN, **DEMO_REPEAT_OPTIONS)

    def save(step: int, loss: float) -> None:
        d = out / f"checkpoint-{step}"
        model.to(torch.float16).save_pretrained(d)  # float16 halves the shipped size
        model.to(torch.float32)
        write_byte_tokenizer(d)  # so that AutoTokenizer.from_pretrained(d) works like on a hub model
        state = {"global_step": step, "num_input_tokens_seen": step * BATCH * SEQ_LEN, "loss": loss,
                 "train_batch_size": BATCH, "seq_len": SEQ_LEN}
        (d / "trainer_state.json").write_text(json.dumps(state, indent=1))

    loss_val = float("nan")
    model.train()
    for step in range(steps + 1):
        if step in schedule:
            save(step, loss_val)
        if monitor is not None:  # after save: the saved float16 round trip is what training continues from
            monitor.step(step)
        if step == steps:
            break
        ids = synthetic_batch(g)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_val = float(loss)
        if step % 100 == 0:
            log(f"step {step} loss {loss_val:.3f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=MONITOR_EVERY,
                   help=f"score every head every N steps into <out>_live (0: off; default {MONITOR_EVERY})")
    p.add_argument("--live-out", type=Path, default=None, help="the live table's directory (default <out>_live)")
    a = p.parse_args(argv)
    if a.every < 0:
        p.error(f"--every must be >= 0, got {a.every}")
    torch.set_num_threads(1)  # the run is tiny: threads only add contention and nondeterminism
    train(a.out, steps=a.steps, seed=a.seed, monitor_every=a.every, live_out=a.live_out)


if __name__ == "__main__":
    main()

"""Training-time overhead of watching heads live (circuit_stats.training), side by side.

    python -m bench.bench_training              # demo training + a Pythia-70M-shaped model (CPU ok)
    python -m bench.bench_training --quick      # harness check (timings meaningless)

For each workload, in one process, training segments without and with a ``Monitor`` alternate
(order flipped every round). Each segment runs ``--steps`` optimizer steps; in the monitored one
the Monitor scores every ``--every`` steps (so it fires within a short run). Recorded:

* ``step_s``: median seconds of one optimizer step (forward, backward, AdamW), both arms;
* ``score_s``: median seconds of one scoring (``Monitor.step`` on a grid step: the protocol at its
  options, the attention switch, the RNG save/restore and the atomic table rewrite);
* ``measured_overhead``: (monitored segment time - plain segment time) / plain, summed over the
  rounds, at interval ``--every``: the directly measured side-by-side number;
* ``overhead_at``: for the intervals of interest (the default included), ``score_s / (N *
  step_s)``: computed from the measured medians, since a run of hundreds of steps per interval
  does not fit the benchmark; ``overhead_at_default_every_from_segments`` computes it instead
  from the segment totals (extra seconds per scoring / (N * seconds per plain step)), which
  also counts indirect costs (allocator, caches) on the training steps after a scoring. Monitoring does not change what training computes (tests: identical
  weights), so the cost is additive; ``measured_overhead`` checks the formula at ``--every``.

The Monitor is what ``CircuitStatsCallback`` runs on each grid step (the callback adds one
``Trainer.log`` call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from bench.common import environment, write_results

INTERVALS = (10, 50, 100, 200, 500, 1000)


@dataclass
class Workload:
    name: str
    config: object
    batch: int
    seq_len: int
    options: dict = field(default_factory=dict)
    vocab: tuple = (0, 256)
    note: str = ""


def pythia_70m_shape():
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                         intermediate_size=2048, rotary_pct=0.25, use_parallel_residual=True,
                         max_position_embeddings=2048, tie_word_embeddings=False)


def workloads(quick: bool) -> list[Workload]:
    from circuit_stats.demo.series import DEMO_REPEAT_OPTIONS
    from circuit_stats.demo.train import BATCH, SEQ_LEN, demo_config

    demo = Workload("demo", demo_config(), BATCH, SEQ_LEN, dict(DEMO_REPEAT_OPTIONS), (32, 127),
                    "the bundled demo training (python -m circuit_stats.demo.train) with its repeat options")
    pythia = Workload("pythia-70m-shape", pythia_70m_shape(), 2, 64, {}, (0, 50304),
                      "Pythia-70M shape, random init, 2 x 64-token batches, repeat protocol defaults")
    if quick:
        from circuit_stats.models.families import tiny_pythia_config

        tiny = Workload("quick", tiny_pythia_config(vocab_size=128), 2, 16, dict(n_sequences=2, seq_len=8), (0, 128))
        return [tiny]
    return [demo, pythia]


def run_workload(w: Workload, *, rounds: int, steps: int, every: int, seed: int = 0) -> dict:
    from transformers import GPTNeoXForCausalLM

    from circuit_stats.training import Monitor

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(w.config)
    model.set_attn_implementation("sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed + 1)
    out = tempfile.mkdtemp(prefix=f"bench-training-{w.name}-")
    monitor = Monitor(model, every=every, out=out, **w.options)

    def train_step():
        ids = torch.randint(w.vocab[0], w.vocab[1], (w.batch, w.seq_len), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_step()  # warm-up: allocator, first-call overheads
    monitor.score(0)
    step_times, score_times, segments = [], [], {"plain": [], "monitored": []}
    global_step = 1
    for r in range(rounds):
        for arm in (("plain", "monitored") if r % 2 == 0 else ("monitored", "plain")):
            t_seg = time.perf_counter()
            for _ in range(steps):
                if arm == "monitored":
                    t0 = time.perf_counter()
                    if monitor.step(global_step) is not None:
                        score_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                train_step()
                step_times.append(time.perf_counter() - t0)
                global_step += 1
            segments[arm].append(time.perf_counter() - t_seg)
    step_s, score_s = statistics.median(step_times), statistics.median(score_times)
    plain, monitored = sum(segments["plain"]), sum(segments["monitored"])
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "workload": w.name, "note": w.note, "params_M": round(n_params / 1e6, 2),
        "layers": w.config.num_hidden_layers, "heads": w.config.num_attention_heads,
        "train_tokens_per_step": w.batch * w.seq_len, "score_options": {k: list(v) if isinstance(v, tuple) else v
                                                                         for k, v in w.options.items()},
        "rounds": rounds, "steps_per_segment": steps, "every_measured": every,
        "n_scorings": len(score_times), "step_s": step_s, "score_s": score_s,
        "step_s_all": [round(t, 4) for t in step_times], "score_s_all": [round(t, 4) for t in score_times],
        "segments_plain_s": [round(t, 3) for t in segments["plain"]],
        "segments_monitored_s": [round(t, 3) for t in segments["monitored"]],
        "measured_overhead": (monitored - plain) / plain,
        # per-scoring cost as the side-by-side segments see it (indirect costs included)
        "score_s_from_segments": (monitored - plain) / max(len(score_times), 1),
        "step_s_plain_segments": plain / (rounds * steps),
        "computed_overhead_at_measured_every": score_s / (every * step_s),
        "score_in_training_steps": score_s / step_s,
        "overhead_at": {str(n): score_s / (n * step_s) for n in INTERVALS},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per segment")
    p.add_argument("--every", type=int, default=3, help="scoring interval inside the monitored segments")
    p.add_argument("--only", default=None, help="run one workload (demo | pythia-70m-shape)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=None)
    a = p.parse_args(argv)
    from circuit_stats.training import DEFAULT_EVERY

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for w in workloads(a.quick):
        if a.only and w.name != a.only:
            continue
        t0 = time.time()
        row = run_workload(w, rounds=1 if a.quick else a.rounds, steps=2 if a.quick else a.steps,
                           every=1 if a.quick else a.every)
        row["default_every"] = DEFAULT_EVERY
        row["overhead_at_default_every"] = row["score_s"] / (DEFAULT_EVERY * row["step_s"])
        row["overhead_at_default_every_from_segments"] = row["score_s_from_segments"] / (
            DEFAULT_EVERY * row["step_s_plain_segments"])
        row["wall_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"{w.name}: step {row['step_s']:.3f}s, scoring {row['score_s']:.3f}s "
              f"(= {row['score_in_training_steps']:.2f} steps); measured overhead at every={row['every_measured']}: "
              f"{row['measured_overhead']:.1%} (computed {row['computed_overhead_at_measured_every']:.1%}); "
              f"at every={DEFAULT_EVERY}: {row['overhead_at_default_every']:.2%}", flush=True)
    env = environment("cpu")
    env.update(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    extra = {"noise": "CPU shared by ~8 engineers on 2 cores during the run: timings are noisy; arms are interleaved "
                      "(order flipped each round) and medians reported",
             "method": "overhead_at[N] = score_s / (N * step_s), from measured medians; measured_overhead is the "
                       "direct side-by-side ratio at every_measured"}
    name = "training-quick" if a.quick else "training"
    jpath, _ = write_results(name, env, rows, ["workload", "params_M", "train_tokens_per_step", "step_s", "score_s",
                                               "score_in_training_steps", "measured_overhead",
                                               "computed_overhead_at_measured_every", "overhead_at_default_every"],
                             out_dir=a.out_dir, extra=extra)
    print(f"wrote {jpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

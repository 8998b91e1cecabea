"""CPU speed of the torch backend on the Pythia-70M shape (issue 9 item 4).

    python -m bench.bench_cpu [--lengths 2048 8192] [--repeats 3] [--model-lengths 2048]

Side by side in one process, interleaved (every variant once per round, rounds repeated),
medians reported:

* model level (random GPT-NeoX with Pythia-70M's shape: 6 layers, 8 heads, D = 64, hidden 512;
  no download; the transformer body, without the unembedding): ``sdpa``; ``circuit_stats`` outside ``record()``;
  ``circuit_stats`` inside ``record()`` with every statistic record() offers; ``eager`` forward
  alone (no statistics).
* attention level (one layer, [1, 8, N, 64]): SDPA; ``attention_with_stats`` with no statistic
  (the SDPA path); with every statistic (torch backend); eager attention as transformers
  writes it (materialised scores, softmax, matmul).
* peak extra memory (ru_maxrss in a fresh subprocess) of one attention call with every
  statistic, vs N.

Writes ``bench/results/cpu-<machine>-<date>.json`` (+ ``.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time

import torch

from .common import environment, write_results

HEADS, HEAD_DIM, LAYERS = 8, 64, 6
ALL_STATS = dict(offsets=(1, 2), entropy=True, distance=True, local_window=16, top1=True)
RECORD_STATS = dict(offsets=(1, 2), entropy=True)  # + token_ids: induction and duplicate


def pythia70m_shaped(attn_implementation: str, max_len: int):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    import circuit_stats  # noqa: F401  (registers attn_implementation="circuit_stats")

    cfg = GPTNeoXConfig(hidden_size=512, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=2048,
                        vocab_size=50304, rotary_pct=0.25, max_position_embeddings=max_len)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation).eval()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(variants: dict, repeats: int) -> dict:
    """Median seconds per variant; every round runs each variant once, in turn (after one
    warm-up round when there are several rounds)."""
    for fn in variants.values() if repeats > 1 else ():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def model_level(n: int, repeats: int) -> dict:
    from circuit_stats import record

    models = {impl: pythia70m_shaped(impl, n) for impl in ("sdpa", "circuit_stats", "eager")}
    state = models["sdpa"].state_dict()
    for m in models.values():
        m.load_state_dict(state)
    ids = torch.randint(0, 50304, (1, n))

    # The transformer body (model.gpt_neox): the 50k-vocabulary unembedding is the same matmul for
    # every variant and would only dilute the attention differences.
    def run(impl):
        with torch.inference_mode():
            models[impl].gpt_neox(input_ids=ids)

    def recorded():
        body = models["circuit_stats"].gpt_neox
        with torch.inference_mode(), record(body, token_ids=ids, **RECORD_STATS):
            body(input_ids=ids)

    t = interleaved({"sdpa": lambda: run("sdpa"), "circuit_stats": lambda: run("circuit_stats"),
                     "record_all": recorded, "eager": lambda: run("eager")}, repeats)
    return {"level": "model", "n": n, **{f"{k}_s": v for k, v in t.items()},
            "outside_record_vs_sdpa": t["circuit_stats"] / t["sdpa"],
            "record_vs_eager": t["record_all"] / t["eager"], "record_vs_sdpa": t["record_all"] / t["sdpa"]}


def eager_attention(q, k, v):
    """transformers' eager attention: materialised scores + additive causal mask + softmax."""
    n = q.shape[2]
    mask = torch.full((n, n), -math.inf).triu(1)
    w = torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM ** -0.5 + mask, -1)
    return w @ v


def attention_level(n: int, repeats: int) -> dict:
    from circuit_stats.kernels import attention_with_stats

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM).transpose(1, 2) for _ in range(3))
    tok = torch.randint(0, 50304, (1, n))
    span = torch.tensor([[n // 4, n // 2]])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.inference_mode():
        t = interleaved({
            "sdpa": lambda: sdpa(q, k, v, is_causal=True),
            "circuit_stats": lambda: attention_with_stats(q, k, v),
            "all_stats": lambda: attention_with_stats(q, k, v, token_ids=tok, span=span, **ALL_STATS),
            "eager": lambda: eager_attention(q, k, v),
        }, repeats)
    return {"level": "attention", "n": n, **{f"{k}_s": v for k, v in t.items()},
            "outside_record_vs_sdpa": t["circuit_stats"] / t["sdpa"],
            "record_vs_eager": t["all_stats"] / t["eager"], "record_vs_sdpa": t["all_stats"] / t["sdpa"]}


# Peak resident memory above the level before the call, sampled every 2 ms from /proc (the
# process' lifetime maximum, ru_maxrss, is dominated by the imports at these sizes).
PROBE = textwrap.dedent("""
    import sys, threading, time, torch
    from circuit_stats.kernels import attention_with_stats

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    n = int(sys.argv[1])
    q, k, v = (torch.randn(1, n, 8, 64).transpose(1, 2) for _ in range(3))
    tok = torch.randint(0, 50304, (1, n))
    kw = dict(token_ids=tok, span=torch.tensor([[0, n // 2]]), offsets=(1, 2), entropy=True, distance=True,
              local_window=16, top1=True)
    attention_with_stats(q[:, :, :64], k[:, :, :64], v[:, :, :64], token_ids=tok[:, :64], offsets=(1,))  # warm
    before, peak, done = rss(), [0], [False]

    def sample():
        while not done[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample)
    th.start()
    attention_with_stats(q, k, v, **kw)
    done[0] = True
    th.join()
    print(max(peak[0], rss()) - before)
""")


def peak_memory(n: int) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, str(n)], capture_output=True, text=True, check=True)
    extra = int(res.stdout.strip().splitlines()[-1])
    return {"level": "memory", "n": n, "peak_extra_mib": extra / 2**20,
            "full_matrix_mib": HEADS * n * n * 4 / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="*", default=[2048, 8192], help="attention-level lengths")
    ap.add_argument("--model-lengths", type=int, nargs="*", default=[2048, 8192], help="model-level lengths")
    ap.add_argument("--memory-lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--name", default="cpu", help="results file stem: bench/results/<name>-<machine>-<date>.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = ap.parse_args(argv)
    env = environment("cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    env["commit"] = commit.stdout.strip() or None
    env.update(machine=platform.node(), processor=platform.processor() or platform.machine(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               load_average_at_start=os.getloadavg())
    rows = []
    for n in args.lengths:
        rows.append(attention_level(n, args.repeats))
        print(rows[-1], flush=True)
    for n in args.model_lengths:
        rows.append(model_level(n, args.repeats))
        print(rows[-1], flush=True)
    for n in args.memory_lengths:
        rows.append(peak_memory(n))
        print(rows[-1], flush=True)
    env["load_average_at_end"] = os.getloadavg()
    extra = {"note": args.note, "repeats": args.repeats,
             "targets": {"outside_record_vs_sdpa": "<= 1.1", "record_vs_eager": "<= 1.0 at 2048, <= 0.5 at 8192",
                         "record_vs_sdpa": "<= 2 at 8192", "memory": "linear in N"}}
    cols = ["level", "n", "sdpa_s", "circuit_stats_s", "record_all_s", "all_stats_s", "eager_s",
            "outside_record_vs_sdpa", "record_vs_eager", "record_vs_sdpa", "peak_extra_mib", "full_matrix_mib"]
    jpath, mpath = write_results(args.name, env, rows, cols, extra=extra)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

``--baseline REF`` also times the torch backend of git ``REF`` (its ``kernels/chunked.py``,
imported next to the current one and swapped in for its rows) in the same rounds: before/after
on the same machine under the same load.

Writes ``bench/results/cpu-<machine>-<date>.json`` (+ ``.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import types

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


def chunked_at(ref: str) -> types.ModuleType:
    """``kernels/chunked.py`` as it was at git ``ref``, imported as a module of the installed
    package (its relative imports resolve to today's side inputs and statistics container)."""
    src = subprocess.run(["git", "show", f"{ref}:kernels/chunked.py"], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    import circuit_stats.kernels  # noqa: F401  (the package the module's relative imports need)

    mod = types.ModuleType("circuit_stats.kernels.chunked_baseline")
    mod.__package__ = "circuit_stats.kernels"
    exec(compile(src, f"{ref}:kernels/chunked.py", "exec"), mod.__dict__)
    return mod


def takes_request(chunked_fn):
    """``chunked_fn`` called as ``(q, k, v, request, side)``: a baseline from before
    ``StatsRequest`` takes the request's fields as keywords."""
    if "request" in inspect.signature(chunked_fn).parameters:
        return chunked_fn

    def call(q, k, v, request, side, **kwargs):
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        return chunked_fn(q, k, v, side=side, **fields, **kwargs)
    return call


@contextlib.contextmanager
def torch_backend(module: types.ModuleType):
    """Route ``attention_with_stats``' torch backend to ``module.attention_with_stats_chunked``."""
    from circuit_stats.kernels import dispatch

    current = dispatch.attention_with_stats_chunked
    dispatch.attention_with_stats_chunked = takes_request(module.attention_with_stats_chunked)
    try:
        yield
    finally:
        dispatch.attention_with_stats_chunked = current


def with_backend(fn, module):
    def run():
        with torch_backend(module):
            return fn()
    return run


def model_level(n: int, repeats: int, baseline=None) -> dict:
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

    variants = {"sdpa": lambda: run("sdpa"), "circuit_stats": lambda: run("circuit_stats"), "record_all": recorded,
                "eager": lambda: run("eager")}
    if baseline is not None:
        variants["record_all_baseline"] = with_backend(recorded, baseline)
    t = interleaved(variants, repeats)
    return {"level": "model", "n": n, **{f"{k}_s": v for k, v in t.items()},
            "outside_record_vs_sdpa": t["circuit_stats"] / t["sdpa"],
            "record_vs_eager": t["record_all"] / t["eager"], "record_vs_sdpa": t["record_all"] / t["sdpa"],
            **({"baseline_record_vs_eager": t["record_all_baseline"] / t["eager"],
                "baseline_record_vs_sdpa": t["record_all_baseline"] / t["sdpa"]} if baseline is not None else {})}


def eager_attention(q, k, v):
    """transformers' eager attention: materialised scores + additive causal mask + softmax."""
    n = q.shape[2]
    mask = torch.full((n, n), -math.inf).triu(1)
    w = torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM ** -0.5 + mask, -1)
    return w @ v


def attention_level(n: int, repeats: int, baseline=None) -> dict:
    from circuit_stats.kernels import attention_with_stats

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM).transpose(1, 2) for _ in range(3))
    tok = torch.randint(0, 50304, (1, n))
    span = torch.tensor([[n // 4, n // 2]])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    def all_stats():
        return attention_with_stats(q, k, v, token_ids=tok, span=span, **ALL_STATS)

    variants = {"sdpa": lambda: sdpa(q, k, v, is_causal=True), "circuit_stats": lambda: attention_with_stats(q, k, v),
                "all_stats": all_stats, "eager": lambda: eager_attention(q, k, v)}
    if baseline is not None:
        variants["all_stats_baseline"] = with_backend(all_stats, baseline)
    with torch.inference_mode():
        t = interleaved(variants, repeats)
    return {"level": "attention", "n": n, **{f"{k}_s": v for k, v in t.items()},
            "outside_record_vs_sdpa": t["circuit_stats"] / t["sdpa"],
            "record_vs_eager": t["all_stats"] / t["eager"], "record_vs_sdpa": t["all_stats"] / t["sdpa"],
            **({"baseline_record_vs_eager": t["all_stats_baseline"] / t["eager"],
                "baseline_record_vs_sdpa": t["all_stats_baseline"] / t["sdpa"]} if baseline is not None else {})}


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
    ap.add_argument("--baseline", metavar="REF", help="also time the torch backend of this git commit/branch")
    args = ap.parse_args(argv)
    baseline = chunked_at(args.baseline) if args.baseline else None
    env = environment("cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    env["commit"] = commit.stdout.strip() or None
    env.update(machine=platform.node(), processor=platform.processor() or platform.machine(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               load_average_at_start=os.getloadavg())
    rows = []
    for n in args.lengths:
        rows.append(attention_level(n, args.repeats, baseline))
        print(rows[-1], flush=True)
    for n in args.model_lengths:
        rows.append(model_level(n, args.repeats, baseline))
        print(rows[-1], flush=True)
    for n in args.memory_lengths:
        rows.append(peak_memory(n))
        print(rows[-1], flush=True)
    env["load_average_at_end"] = os.getloadavg()
    if args.baseline:
        ref = subprocess.run(["git", "rev-parse", "--short", args.baseline], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        env["baseline_commit"] = ref.stdout.strip() or args.baseline
    extra = {"note": args.note, "repeats": args.repeats,
             "targets": {"outside_record_vs_sdpa": "<= 1.1", "record_vs_eager": "<= 1.0 at 2048, <= 0.5 at 8192",
                         "record_vs_sdpa": "<= 2 at 8192", "memory": "linear in N"}}
    cols = ["level", "n", "sdpa_s", "circuit_stats_s", "record_all_s", "all_stats_s", "eager_s",
            "outside_record_vs_sdpa", "record_vs_eager", "record_vs_sdpa", "peak_extra_mib", "full_matrix_mib"]
    if args.baseline:
        cols[5:5] = ["record_all_baseline_s", "all_stats_baseline_s"]
        cols[-2:-2] = ["baseline_record_vs_eager", "baseline_record_vs_sdpa"]
    jpath, mpath = write_results(args.name, env, rows, cols, extra=extra)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Long-context profiling benchmark (issue 13), on the CPU.

    python -m bench.bench_profile                          # 8k, 32k, 64k ours; eager up to its memory cap
    python -m bench.bench_profile --sizes 2048 8192 --eager-sizes 2048 4096
    python -m bench.bench_profile --retrieval 16384        # the retrieval protocol at 16k on the demo model

``profile`` (every statistic, log2 position bins, chunked prefill of 1024 tokens) on one random-token
document of N tokens with the Pythia-70M shape (6 layers, 8 heads, head dim 64, hidden 512, random
init, float32), against eager attention with ``output_attentions=True`` plus the same statistics
computed from the materialised maps (``stats_from_probabilities``). Each measurement runs in a fresh
subprocess, which reports its wall time and peak resident memory (``ru_maxrss``). Eager is run only
where its attention maps alone (layers x heads x N^2 x 4 bytes) fit under ``--eager-mem-gb``; above
that the row says it was not run, and why, rather than exhaust a shared machine. A size whose run
exceeds ``--timeout`` is reported as such.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from bench.common import environment, write_results

COLUMNS = ["path", "N", "seconds", "tokens_per_s", "peak_rss_mib", "status"]
SHAPE = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048)


def pythia_70m_shape(attn: str, max_positions: int):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    import circuit_stats  # noqa: F401  (registers the attention implementation)

    config = GPTNeoXConfig(**SHAPE, rotary_pct=0.25, use_parallel_residual=True, max_position_embeddings=max_positions,
                           bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()


def eager_attention_bytes(n: int) -> int:
    return SHAPE["num_hidden_layers"] * SHAPE["num_attention_heads"] * n * n * 4


def run_one(path: str, n: int) -> dict:
    """In the child process: one measurement."""
    ids = torch.randint(100, 50000, (1, n), generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    if path == "profile":
        from circuit_stats.profiling import profile

        model = pythia_70m_shape("circuit_stats", max(n, 2048))
        t0 = time.perf_counter()
        df = profile(model, [ids[0].tolist()], progress=False)
        assert not df.isna().any().any()
    elif path == "eager-attentions":
        from circuit_stats.kernels import stats_from_probabilities

        model = pythia_70m_shape("eager", max(n, 2048))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(ids, output_attentions=True)
            for probs in out.attentions:
                stats_from_probabilities(probs, offsets=(1,), token_ids=ids, entropy=True, distance=True,
                                         local_window=16, top1=True)
    else:
        raise ValueError(path)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(path: str, n: int, timeout: float) -> dict:
    row = {"path": path, "N": n}
    try:
        res = subprocess.run([sys.executable, "-m", "bench.bench_profile", "--one", path, str(n)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"not finished within {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        return {**row, "status": f"failed (exit {res.returncode}): {tail[0][:200]}"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {**row, **out, "tokens_per_s": n / out["seconds"], "status": "ok"}


def retrieval_run(n: int) -> dict:
    from transformers import AutoModelForCausalLM

    import circuit_stats
    from circuit_stats.demo.series import demo_series_dir

    model = AutoModelForCausalLM.from_pretrained(demo_series_dir() / "checkpoint-1600", dtype=torch.float32,
                                                 attn_implementation="circuit_stats")
    t0 = time.perf_counter()
    df = circuit_stats.score_heads(model, "retrieval", tokenizer="bytes", context_lengths=[n], depths=[0.5],
                                   n_needles=1, progress=False)
    seconds = time.perf_counter() - t0
    return {"path": "retrieval-protocol (demo model)", "N": n, "seconds": seconds, "tokens_per_s": n / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "status": f"ok: copied {df.attrs['settings']['n_copied']} of 1 needles; max retrieval_score_all_trials "
                      f"{df['retrieval_score_all_trials'].max():.2f}"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[8192, 32768, 65536])
    p.add_argument("--eager-sizes", type=int, nargs="*", default=[2048, 4096, 8192, 32768, 65536])
    p.add_argument("--eager-mem-gb", type=float, default=6.0,
                   help="run eager only where its attention maps alone fit under this (shared machine)")
    p.add_argument("--timeout", type=float, default=3000.0, help="seconds per measurement")
    p.add_argument("--retrieval", type=int, default=None, help="instead: the retrieval protocol at this length")
    p.add_argument("--name", default="profile", help="results file prefix")
    p.add_argument("--one", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(a.one[0], int(a.one[1]))))
        return
    env = environment("cpu")
    env["torch_threads"] = torch.get_num_threads()
    if a.retrieval:
        rows = [retrieval_run(a.retrieval)]
        print(rows[0])
        write_results("retrieval", env, rows, COLUMNS)
        return
    rows = []
    for n in a.eager_sizes:
        need = eager_attention_bytes(n)
        if need > a.eager_mem_gb * 2**30:
            rows.append({"path": "eager-attentions", "N": n,
                         "status": f"not run: its attention maps alone need {need / 2**30:.1f} GiB "
                                   f"(> the {a.eager_mem_gb:g} GiB cap on this shared machine)"})
        else:
            rows.append(measure("eager-attentions", n, a.timeout))
        print(rows[-1], flush=True)
    for n in a.sizes:
        rows.append(measure("profile", n, a.timeout))
        print(rows[-1], flush=True)
    jpath, _ = write_results(a.name, env, rows, COLUMNS, extra={"shape": SHAPE, "statistics": "all (8), log2 bins",
                                                                   "chunk_size": 1024})
    print(f"-> {jpath}")


if __name__ == "__main__":
    main()

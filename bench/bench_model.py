"""Model-level benchmark: random weights in the real shapes of Pythia-1B and OLMo-1B.

    python -m bench.bench_model              # full run (needs a CUDA GPU)
    python -m bench.bench_model --quick      # tiny CPU-sized check of the harness

Forward passes at 2k, 8k and 32k tokens (batch 1): tokens/s and peak memory for
  sdpa                  torch SDPA, no statistics
  circuit_stats         our kernel outside a recording (plain fused forward)
  circuit_stats-record  inside record() with every statistic
  eager-attentions      eager attention with output_attentions=True
and the xu2026 protocol end to end on the Pythia-1B shape: seconds per checkpoint (compute
only) through the fused kernel vs the eager path the study used (full attention matrices,
last row read out).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import circuit_stats
from bench.common import environment, is_oom, median_ms, peak_memory, write_results
from circuit_stats.protocols import xu2026

COLUMNS = ["model", "path", "N", "median_ms", "tokens_per_s", "peak_mem_mib", "status"]
PATHS = ["sdpa", "circuit_stats", "circuit_stats-record", "eager-attentions"]


def real_shape_configs(quick: bool) -> dict:
    from transformers import GPTNeoXConfig, OlmoConfig

    if quick:
        from circuit_stats.models.families import tiny_olmo_config, tiny_pythia_config

        return {"pythia-1b-shape": tiny_pythia_config(vocab_size=10000), "olmo-1b-shape": tiny_olmo_config(vocab_size=10000)}
    return {
        "pythia-1b-shape": GPTNeoXConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=8,
                                         intermediate_size=8192, rotary_pct=0.25, use_parallel_residual=True,
                                         max_position_embeddings=32768, tie_word_embeddings=False),
        "olmo-1b-shape": OlmoConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
                                    num_key_value_heads=16, intermediate_size=8192, clip_qkv=8.0,
                                    max_position_embeddings=32768, pad_token_id=1, eos_token_id=50279, bos_token_id=None),
    }


def build(config, impl: str, device: str, dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialise the weights where they run (a 1B model on the CPU takes seconds)
        return AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=dtype).eval()


def forward_fn(model, path: str, ids):
    if path == "circuit_stats-record":
        def run():
            with torch.no_grad(), circuit_stats.record(model, offsets=(1, 2, 3), token_match=True, entropy=True) as rec:
                model(ids, use_cache=False)
            return rec.tensors()
        return run
    if path == "eager-attentions":
        return lambda: _no_grad(lambda: model(ids, output_attentions=True, use_cache=False))
    return lambda: _no_grad(lambda: model(ids, use_cache=False))


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def eager_xu2026(model, n_sequences: int, seq_len: int, batch_size: int) -> torch.Tensor:
    """The study's path: eager attention matrices, last row at the per-sequence targets."""
    seqs, ab = xu2026.make_sequences(n_sequences, seq_len)
    keys = torch.from_numpy(xu2026.target_keys(ab, seq_len, xu2026.baseline_positions(seq_len)))
    dev = next(model.parameters()).device
    sums = None
    for s in range(0, n_sequences, batch_size):
        ids = torch.from_numpy(seqs[s : s + batch_size]).to(dev)
        with torch.no_grad():
            att = model(ids, output_attentions=True, use_cache=False).attentions
        k = keys[s : s + batch_size].to(dev)
        per_layer = torch.stack([a[:, :, -1, :].gather(-1, k[:, None, :].expand(-1, a.shape[1], -1)).sum(0) for a in att])
        sums = per_layer if sums is None else sums + per_layer
    return sums / n_sequences


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", default=None)
    p.add_argument("--models", default=None, help="comma list of model shapes (default: all)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--xu-sequences", type=int, default=None)
    p.add_argument("--out-dir", default=None)
    a = p.parse_args(argv)
    if not a.quick and not a.device.startswith("cuda"):
        print("the full run needs a CUDA GPU; use --quick for a CPU harness check", file=sys.stderr)
        return 2
    lengths = [int(x) for x in (a.lengths or ("64,128" if a.quick else "2048,8192,32768")).split(",")]
    dtype = getattr(torch, a.dtype or ("float32" if a.quick else "bfloat16"))
    rep = 3 if a.quick else 10
    configs = real_shape_configs(a.quick)
    names = a.models.split(",") if a.models else list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        print(f"--models: unknown {unknown}; expected a comma list of {', '.join(configs)}", file=sys.stderr)
        return 2
    rows = []
    for name, config in ((n, configs[n]) for n in names):
        for path in PATHS:
            impl = {"sdpa": "sdpa", "eager-attentions": "eager"}.get(path, "circuit_stats")
            model = build(config, impl, a.device, dtype)
            dead = False
            for N in lengths:
                row = {"model": name, "path": path, "N": N}
                if dead:
                    rows.append({**row, "status": "oom (at a smaller N)"})
                    continue
                ids = torch.randint(100, 10000, (1, N), device=a.device)
                try:
                    fn = forward_fn(model, path, ids)
                    fn()
                    ms = median_ms(fn, a.device, warmup=1, rep=rep)
                    mem = peak_memory(fn, a.device)
                    row.update(median_ms=ms, tokens_per_s=N / (ms * 1e-3),
                               peak_mem_mib=None if mem is None else mem / 2**20, status="ok")
                except Exception as err:  # noqa: BLE001
                    dead = is_oom(err)
                    row["status"] = "oom" if dead else f"error: {type(err).__name__}: {str(err)[:200]}"
                finally:
                    if a.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                rows.append(row)
                print(row, flush=True)
            del model

    # xu2026 end to end on the Pythia-1B shape (compute only: the model is built beforehand)
    config = real_shape_configs(a.quick)["pythia-1b-shape"]
    n_seq = a.xu_sequences or (8 if a.quick else 2000)
    seq_len = 160 if a.quick else 256
    xu = {"n_sequences": n_seq, "seq_len": seq_len}
    ours = build(config, "circuit_stats", a.device, dtype)
    t0 = time.perf_counter()
    df = circuit_stats.score_heads(ours, "xu2026", n_sequences=n_seq, seq_len=seq_len, batch_size=32, progress=False)
    _sync(a.device)
    xu["fused_s"] = time.perf_counter() - t0
    del ours
    eager = build(config, "eager", a.device, dtype)
    t0 = time.perf_counter()
    try:
        ref = eager_xu2026(eager, n_seq, seq_len, batch_size=32)
        _sync(a.device)
        xu["eager_s"] = time.perf_counter() - t0
        xu["max_abs_diff_induction_attn"] = float((torch.tensor(df["attn_induction"].to_numpy()).view_as(ref[..., 0].cpu())
                                                   - ref[..., 0].float().cpu()).abs().max())
        xu["speedup"] = xu["eager_s"] / xu["fused_s"]
    except Exception as err:  # noqa: BLE001
        xu["eager_status"] = "oom" if is_oom(err) else f"error: {err}"
    print("xu2026", xu)
    env = environment(a.device)
    jpath, _ = write_results("model" + ("-quick" if a.quick else ""), env, rows, COLUMNS, a.out_dir,
                             extra={"dtype": str(dtype), "xu2026_end_to_end": xu})
    print(f"wrote {jpath}")
    return 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())

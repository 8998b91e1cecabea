"""Kernel microbenchmark: fused statistics vs plain attention, SDPA, FlexAttention and eager.

    python -m bench.bench_kernel                 # the full sweep (needs a CUDA GPU)
    python -m bench.bench_kernel --quick         # tiny CPU-sized check of the harness

Variants (causal, self-attention, Nq = Nk = N):
  a  ours-plain         our kernel, no statistics
  b  ours-sink-offsets  sink + 3 offsets (1, 2, 3)
  c  ours-all           sink + 3 offsets + token-match induction/duplicate + entropy
  c' ours-all-side      the same with the token ids' side inputs built once (``side_inputs=``, as
                        record() does per forward): no per-call validation (a host read) or sorts
  d  sdpa-flash         torch SDPA, flash backend, no statistics
  e  flex-lse-gather    compiled FlexAttention returning the log-sum-exp, then a gather for
                        the sink/offset probabilities exp(q.k * scale - lse)
  f  eager              materialised softmax and the statistics from it (the path of
                        TransformerLens, nnsight and the study) until it runs out of memory
On request (``--variants``):
  a' ours-plain-pointers  ours-plain with K and V loaded through pointers (``CIRCUIT_STATS_TMA=0``),
                        beside ours-plain's TMA loads (the same on the torch backend)
  a" ours-softcap       ours-plain with Gemma 2's logit softcap (50): one ``tanh.approx`` per score
  c" ours-all-softcap   ours-all with the same softcap (a Gemma 2 global layer inside record())
  c* ours-all-loop      ours-all with token matching inside the fused key loop
                        (``triton_token_match.TOKEN_MATCH = "loop"``: the kernel before issue 23's band)
  g  ours-long          sink + 3 offsets + the long-context statistics: distance, local (64 keys),
                        top1, span (the first eighth of the keys); on i.i.d. scores, the worst case
                        of top1's re-scoring (each query block's winning key tiles are re-scored)
  g' ours-long-sink     the same on an attention-sink head's scores: key 0 scores SINK_BONUS (6)
                        above the i.i.d. rest (``bench.top1_rescore_cost``'s "sink" model), so
                        that key wins most rows and a block re-scores 1-3 tiles
  h  ours-capped        no statistics, with a sliding window (4096), the softcap and learned sinks (a
                        Gemma 2 local / gpt-oss layer outside record())
  i  ours-full          everything at once: ours-all + ours-long + ours-capped's window, softcap, sinks
``--tokens`` draws the token ids (token matching's work depends on how repetitive text is):
uniform (default), prose, code, repeated-random or 4-tokens (``bench.token_streams``).

Each row: median ms, TFLOP/s with FLOPs = 2 * 2 * B * H * N * N * D / 2 (the causal scores, whatever
the window), peak extra memory, and for the variants with ours-all's scores (b, c', c*, e, f, g)
the max |sink - sink_ours-all| as a correctness cross-check.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from unittest import mock

import torch

from circuit_stats.kernels import SideInputs, attention_with_stats, stats_from_probabilities, triton_token_match
from circuit_stats.kernels.triton_common import TMA_SWITCH

from bench.common import environment, is_oom, median_ms, peak_memory, write_results
from bench.token_streams import STREAMS_AND_UNIFORM, token_batch
from bench.top1_rescore_cost import SINK_BONUS

OFFSETS = (1, 2, 3)
VARIANTS = ["ours-plain", "ours-sink-offsets", "ours-all", "ours-all-side", "sdpa-flash", "flex-lse-gather", "eager"]
EXTRA_VARIANTS = ["ours-plain-pointers", "ours-softcap", "ours-all-softcap", "ours-all-loop", "ours-long",
                  "ours-long-sink", "ours-capped", "ours-full"]
SOFTCAP = 50.0  # Gemma 2's attn_logit_softcapping
WINDOW = 4096  # Gemma 2's sliding window
LOCAL_WINDOW = 64  # the local statistic's keys (as the compile reports' "long" set)
# variants whose probabilities differ from ours-all's (softcap, window, sinks): no sink cross-check
MODIFIED_SCORES = ("ours-softcap", "ours-all-softcap", "ours-capped", "ours-full", "ours-long-sink")
COLUMNS = ["variant", "dtype", "D", "N", "tokens", "median_ms", "tflops", "peak_mem_mib", "sink_err", "status"]


def causal_flops(B, H, N, D) -> float:
    return 2 * 2 * B * H * N * N * D / 2


def make_variant(name: str, q, k, v, tok, backend: str):
    scale = q.shape[-1] ** -0.5
    if name == "ours-plain":
        return lambda: attention_with_stats(q, k, v, backend=backend)
    if name == "ours-plain-pointers":
        def run():
            with pointer_loads():
                return attention_with_stats(q, k, v, backend=backend)
        return run
    if name == "ours-softcap":
        return lambda: attention_with_stats(q, k, v, softcap=SOFTCAP, backend=backend)
    if name == "ours-all-softcap":
        return lambda: attention_with_stats(q, k, v, offsets=OFFSETS, token_ids=tok, entropy=True, softcap=SOFTCAP,
                                            backend=backend)
    if name == "ours-all-loop":
        def run():
            with in_loop_token_matching():
                return attention_with_stats(q, k, v, offsets=OFFSETS, token_ids=tok, entropy=True, backend=backend)
        return run
    if name == "ours-long-sink":
        q_sink, k_sink = sink_dominated(q, k)
        return lambda: attention_with_stats(q_sink, k_sink, v, backend=backend, **long_kwargs(q))
    if name in ("ours-long", "ours-capped", "ours-full"):
        kwargs = {**(long_kwargs(q) if name != "ours-capped" else {}),
                  **(modifier_kwargs(q) if name != "ours-long" else {}),
                  **(dict(token_ids=tok, entropy=True) if name == "ours-full" else {})}
        return lambda: attention_with_stats(q, k, v, backend=backend, **kwargs)
    if name == "ours-sink-offsets":
        return lambda: attention_with_stats(q, k, v, offsets=OFFSETS, backend=backend)
    if name == "ours-all":
        return lambda: attention_with_stats(q, k, v, offsets=OFFSETS, token_ids=tok, entropy=True, backend=backend)
    if name == "ours-all-side":
        side = SideInputs.build(batch=q.shape[0], k_len=k.shape[2], device=q.device, token_ids=tok)
        return lambda: attention_with_stats(q, k, v, offsets=OFFSETS, entropy=True, side_inputs=side, backend=backend)
    if name == "sdpa-flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run():
            if q.is_cuda:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        return run
    if name == "flex-lse-gather":
        return _flex(q, k, v, scale)
    if name == "eager":
        def run():
            N = q.shape[2]
            s = (q @ k.transpose(-1, -2)).float() * scale
            s = s.masked_fill(~torch.ones(N, N, dtype=torch.bool, device=q.device).tril(), -math.inf)
            p = torch.softmax(s, dim=-1)
            out = (p.to(v.dtype) @ v)
            return out, stats_from_probabilities(p, offsets=OFFSETS, token_ids=tok, entropy=True)

        return run
    raise ValueError(name)


def long_kwargs(q) -> dict:
    """ours-long's statistics: sink + offsets, distance, local, top1 and a span ``[B, 2]`` over
    the first eighth of the keys."""
    B, N = q.shape[0], q.shape[2]
    span = torch.tensor([[0, max(1, N // 8)]] * B, device=q.device)
    return dict(offsets=OFFSETS, distance=True, local_window=LOCAL_WINDOW, top1=True, span=span)


def sink_dominated(q, k, bonus: float = SINK_BONUS):
    """``q, k`` ``[B, H, N, D]`` changed so that every query's scaled score on key 0 is ``bonus``
    above its i.i.d. N(0, 1) scores on the others: feature 0 is 1 in every query and
    ``bonus * sqrt(D)`` in key 0."""
    q, k = q.clone(), k.clone()
    q[..., 0] = 1.0
    k[:, :, 0, 0] = bonus * q.shape[-1] ** 0.5
    return q, k


def modifier_kwargs(q) -> dict:
    """ours-capped's score modifiers: a sliding window, the softcap and learned sinks ``[Hq]``."""
    sinks = torch.linspace(-1.0, 1.0, q.shape[1], device=q.device)
    return dict(window=WINDOW, softcap=SOFTCAP, sinks=sinks)


def in_loop_token_matching() -> contextlib.AbstractContextManager:
    """Token matching inside the fused kernel's key loop, as before the band kernel."""
    return mock.patch.object(triton_token_match, "TOKEN_MATCH", "loop")


@contextlib.contextmanager
def pointer_loads():
    """Our fused kernel loads K and V through pointers inside the block (``TMA_SWITCH``)."""
    before = os.environ.get(TMA_SWITCH)
    os.environ[TMA_SWITCH] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[TMA_SWITCH]
        else:
            os.environ[TMA_SWITCH] = before


def _flex(q, k, v, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, N, D = q.shape
    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, N, N, device=q.device)
    flex = torch.compile(flex_attention, dynamic=False)
    pos = torch.arange(N, device=q.device)
    keys = torch.stack([torch.zeros_like(pos)] + [(pos - o).clamp(min=0) for o in OFFSETS], -1)  # [N, 4]

    def run():
        try:
            from torch.nn.attention.flex_attention import AuxRequest

            out, aux = flex(q, k, v, block_mask=mask, scale=scale, return_aux=AuxRequest(lse=True))
            lse = aux.lse
        except (ImportError, TypeError):
            out, lse = flex(q, k, v, block_mask=mask, scale=scale, return_lse=True)
        # flex computes in log2 space but returns a natural-log LSE (torch converts it back)
        kg = k[:, :, keys]  # [B, H, N, 4, D]: one key row per statistic per query
        s = (q[:, :, :, None, :].float() * kg.float()).sum(-1) * scale
        p = torch.exp(s - lse[..., None].float())
        p[..., 1:] = torch.where((pos[:, None] - torch.tensor(OFFSETS, device=q.device)) >= 0, p[..., 1:], 0.0)
        return out, p

    return run


def sink_of(result) -> torch.Tensor:
    out, extra = result if isinstance(result, tuple) else (result, None)
    if extra is None:
        return None
    if hasattr(extra, "sink"):
        return extra.sink.float()
    return extra[..., 0].float()  # flex: column 0 is the sink probability


def run_sweep(device, dtypes, head_dims, lengths, B, H, variants, backend, rep, log=print,
              tokens: str = "uniform") -> list[dict]:
    """Time each variant at each (dtype, D, N) on the same random q, k, v ``[B, H, N, D]`` and
    token ids ``[B, N]`` drawn from the stream ``tokens``; one row per variant and size."""
    rows = []
    for dtype in dtypes:
        for D in head_dims:
            eager_dead = False
            for N in lengths:
                g = torch.Generator(device="cpu").manual_seed(N * 7 + D)
                q, k, v = (torch.randn(B, H, N, D, generator=g).to(device=device, dtype=dtype) for _ in range(3))
                tok = token_batch(tokens, B, N, g).to(device)
                ref_sink = None
                for name in variants:
                    row = {"variant": name, "dtype": str(dtype).replace("torch.", ""), "D": D, "N": N, "B": B, "H": H,
                           "tokens": tokens}
                    if name == "eager" and eager_dead:
                        rows.append({**row, "status": "oom (at a smaller N)"})
                        continue
                    try:
                        fn = make_variant(name, q, k, v, tok, backend)
                        result = fn()  # compile / autotune outside the timing
                        sink = sink_of(result)
                        if name == "ours-all":
                            ref_sink = sink
                        del result
                        ms = median_ms(fn, device, rep=rep)
                        mem = peak_memory(fn, device)
                        row.update(median_ms=ms, tflops=causal_flops(B, H, N, D) / (ms * 1e-3) / 1e12,
                                   peak_mem_mib=None if mem is None else mem / 2**20, status="ok")
                        if sink is not None and ref_sink is not None and name not in ("ours-all", *MODIFIED_SCORES):
                            row["sink_err"] = float((sink - ref_sink).abs().max())
                    except Exception as err:  # noqa: BLE001 - a benchmark row records what happened
                        if is_oom(err):
                            row["status"] = "oom"
                            eager_dead = eager_dead or name == "eager"
                        else:
                            row["status"] = f"error: {type(err).__name__}: {str(err)[:200]}"
                    finally:
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                    rows.append(row)
                    log(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized sizes (harness check)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default=None, help="comma list, e.g. bfloat16,float16")
    p.add_argument("--head-dims", default=None)
    p.add_argument("--lengths", default=None)
    p.add_argument("--variants", default=None)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--name", default="kernel")
    p.add_argument("--tokens", default="uniform", choices=list(STREAMS_AND_UNIFORM),
                   help="how the token ids are drawn (token matching's work depends on it)")
    a = p.parse_args(argv)
    if a.quick:
        defaults = dict(dtypes="float32", head_dims="16,32", lengths="64,96", B=1, H=2, rep=3,
                        variants="ours-plain,ours-sink-offsets,ours-all,ours-all-side,sdpa-flash,eager")
    else:
        if not a.device.startswith("cuda"):
            print("the full sweep needs a CUDA GPU; use --quick for a CPU harness check", file=sys.stderr)
            return 2
        defaults = dict(dtypes="bfloat16,float16", head_dims="64,128,256",
                        lengths="1024,2048,4096,8192,16384,32768", B=4, H=16, rep=20, variants=",".join(VARIANTS))
    # ours-all first: it is the reference for the sink cross-check
    variants = (a.variants or defaults["variants"]).split(",")
    unknown = [v for v in variants if v not in VARIANTS + EXTRA_VARIANTS]
    if unknown:
        print(f"--variants: unknown {unknown}; expected some of {VARIANTS + EXTRA_VARIANTS}", file=sys.stderr)
        return 2
    variants = sorted(variants, key=lambda v: v != "ours-all")
    dtypes = [getattr(torch, d) for d in (a.dtypes or defaults["dtypes"]).split(",")]
    backend = "triton" if a.device.startswith("cuda") else "torch"
    rows = run_sweep(a.device, dtypes, [int(x) for x in (a.head_dims or defaults["head_dims"]).split(",")],
                     [int(x) for x in (a.lengths or defaults["lengths"]).split(",")], defaults["B"], defaults["H"],
                     variants, backend, defaults["rep"], tokens=a.tokens)
    env = environment(a.device)
    jpath, mpath = write_results(a.name + ("-quick" if a.quick else ""), env, rows, COLUMNS, a.out_dir,
                                 extra={"backend": backend, "quick": a.quick, "offsets": list(OFFSETS)})
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

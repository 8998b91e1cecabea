"""Shared helpers for the kernel tests: random inputs as transformers hands them over, and a
comparison of every statistic against the float64 reference."""

from __future__ import annotations

import math

import torch
from devices import DEVICE, HAS_CUDA

STAT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}
OUT_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}



def capped_score_error(dtype, softcap) -> float:
    """Bound on the Triton kernels' error in a capped score (nats): with 16-bit inputs on a GPU
    they cap with PTX ``tanh.approx.f32`` (relative error <= 2^-11, ``|tanh| <= 1``), as
    FlashAttention does; 0 where the cap is exact (no softcap, fp32 inputs, the CPU)."""
    if softcap is None or dtype == torch.float32 or not HAS_CUDA:
        return 0.0
    return softcap * 2.0 ** -11


def out_tol(dtype, v: torch.Tensor, softcap=None) -> float:
    """``OUT_TOL`` plus what capped scores off by ``eps`` move an output: each probability by a
    factor within ``e^(+-2 eps)``, so the output by at most ``(e^(2 eps) - 1) max |v|``."""
    return OUT_TOL[dtype] + math.expm1(2 * capped_score_error(dtype, softcap)) * v.abs().max().item()


# (B, Hq, Hkv, Nq, Nk, padding)
CASES = {
    "odd-square": (2, 2, 2, 37, 37, None),
    "gqa-odd": (1, 4, 2, 45, 45, None),
    "mqa-decode-1": (2, 4, 1, 1, 29, None),
    "chunk-prefill": (1, 2, 1, 19, 50, None),
    "left-pad": (3, 2, 2, 41, 41, "left"),
    "right-pad": (3, 2, 1, 33, 33, "right"),
    "decode-left-pad": (3, 2, 2, 5, 38, "left"),
}


def make_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, padding, vocab=6):
    """Random q/k/v ([B, N, H, D] transposed, non-contiguous), token ids and a padding mask in
    which the last row is fully padded (no attendable key anywhere)."""
    q = torch.randn(B, Nq, Hq, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    k = torch.randn(B, Nk, Hkv, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    v = torch.randn(B, Nk, Hkv, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    # Sharpen some rows so that probabilities are not all ~1/N and the top key stands out.
    q = q * (1 + 3 * torch.rand(B, Hq, Nq, 1, device=DEVICE, dtype=dtype))
    tok = torch.randint(0, vocab, (B, Nk), device=DEVICE)
    mask = None
    if padding:
        mask = torch.ones(B, Nk, dtype=torch.bool, device=DEVICE)
        lengths = torch.randint(1, Nk, (B,)).tolist()
        lengths[-1] = 0
        for b, n in enumerate(lengths):
            if padding == "left":
                mask[b, : Nk - n] = False
            else:
                mask[b, n:] = False
    return q, k, v, tok, mask


def reference_probabilities(q, k, mask, window=None, softcap=None, sinks=None):
    """float64 probabilities [B, Hq, Nq, Nk] of causal attention with the given modifiers (0 where
    not attendable; with ``sinks`` the keys' share), for the top-1 tie checks of
    ``assert_stats_close``."""
    from circuit_stats.kernels.naive import allowed_keys

    Hq, Hkv, Nq, Nk, D = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    kk = k.double().repeat_interleave(Hq // Hkv, 1)
    s = (q.double() @ kk.transpose(-1, -2)) * D ** -0.5
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed_keys(Nq, Nk, mask, q.device, window), -math.inf)
    if sinks is None:
        return torch.softmax(s, -1).nan_to_num(0.0)
    sink = sinks.double().view(1, Hq, 1, 1).expand(*s.shape[:3], 1)
    return torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]


def random_span(B: int, Nk: int) -> torch.Tensor:
    """``[B, 2]`` random key ranges ``[start, end)``, one of them empty."""
    a = torch.randint(0, Nk + 1, (B, 2), device=DEVICE)
    span = torch.stack([a.min(1).values, a.max(1).values], 1)
    span[0, 1] = span[0, 0]  # an empty range: mass 0
    return span


def assert_stats_close(got, want, dtype, what: str, n_keys: int, p_ref=None, softcap=None) -> None:
    """Every statistic of the float64 ``want`` is present in ``got`` and matches it.

    ``lse``: same -inf/NaN pattern, finite part close. ``distance`` is in tokens, so its
    tolerance scales with the number of keys. ``top1_index`` must match wherever the
    reference's best key beats the runner-up by more than the tolerance. ``softcap``: the
    tolerances widen by what ``capped_score_error`` moves each statistic (a probability or a
    sum of them by ``e^(2 eps) - 1``, the lse by ``eps``, the entropy by ``(2 + 2 softcap) eps``
    nats: ``|s| <= softcap``)."""
    eps = capped_score_error(dtype, softcap)
    moved = math.expm1(2 * eps)
    base = STAT_TOL[dtype] + moved
    tol = {"distance": max(1, n_keys) * (4 * STAT_TOL[dtype] + moved), "lse": STAT_TOL[dtype] + eps,
           "entropy": STAT_TOL[dtype] + (2 + 2 * (softcap or 0)) * eps / math.log(2)}
    for name, ref in want.as_dict().items():
        val = getattr(got, name)
        assert val is not None, f"{what}: {name} missing"
        assert val.shape == ref.shape, f"{what}: {name} shape {tuple(val.shape)} != {tuple(ref.shape)}"
        assert torch.equal(val.isnan(), ref.isnan()) if val.is_floating_point() else True, f"{what}: {name} NaN pattern"
        if name == "top1_index":
            assert val.dtype == torch.int64
            assert torch.equal(val == -1, ref == -1), f"{what}: top1_index -1 pattern"
            clear = ref >= 0
            if want.top1_prob is not None and p_ref is not None:
                top2 = p_ref.topk(min(2, p_ref.shape[-1]), -1).values
                gap = top2[..., 0] - top2[..., -1] if top2.shape[-1] > 1 else torch.ones_like(top2[..., 0])
                clear &= gap > 4 * base
            assert torch.equal(val[clear], ref[clear]), f"{what}: top1_index differs"
            continue
        assert val.dtype == torch.float32, f"{what}: {name} is {val.dtype}"
        if name == "lse":
            assert torch.equal(torch.isinf(val), torch.isinf(ref)), f"{what}: lse inf pattern"
        fin = torch.isfinite(ref)
        val, ref = val[fin], ref[fin]
        # lse is a score (a log): its rounding error grows with its magnitude (sharp rows at D = 256
        # in fp32 reach 1e-5 absolute), so its tolerance is relative above 1
        scale = ref.abs().clamp(min=1) if name == "lse" else torch.ones_like(ref)
        err = ((val.double() - ref).abs() / scale).max().item() if ref.numel() else 0.0
        limit = tol.get(name, base)
        assert err <= limit, f"{what}: {name} off by {err:.3g}{' (relative above 1)' if name == 'lse' else ''} (tol {limit:.3g})"


def integer_scores_case(dtype):
    """q, k with small integer entries (exact scores) in which the top score ties across tiles
    (keys 5 and 37, 16-key tiles) and within one (37 and 38), a later key 50 beats them, and
    padded keys 0-2 score highest of all."""
    N, D = 64, 16
    c = torch.randint(0, 4, (N,)).double()
    c[[5, 37, 38]], c[50], c[:3] = 9, 12, 20
    k = torch.zeros(1, 1, N, D, dtype=dtype)
    k[0, 0, :, 0] = c.to(dtype)
    k[0, 0, :, 1] = torch.randint(0, 3, (N,)).to(dtype)  # a second feature (at most 2): rows differ
    k[0, 0, [5, 37, 38, 50], 1] = 0  # but not on the top keys: their ties are exact
    q = torch.zeros(1, 1, N, D, dtype=dtype)
    q[0, 0, :, 0] = 1
    q[0, 0, :, 1] = torch.randint(0, 2, (N,)).to(dtype)
    v = torch.randn(1, 1, N, D).to(dtype)
    mask = torch.ones(1, N, dtype=torch.bool)
    mask[0, :3] = False
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), mask.to(DEVICE)


def first_top_key(q, k, mask, window=None, softcap=None):
    """``[Nq]`` the first key with the highest score of each query of ``q, k [1, 1, N, D]`` (-1
    where none is attendable), from float64 scores: the top-1 key with exact ties."""
    from circuit_stats.kernels.naive import allowed_keys

    Nq, Nk, D = q.shape[2], k.shape[2], q.shape[3]
    s = (q.double() @ k.double().transpose(-1, -2)) * D ** -0.5
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed_keys(Nq, Nk, mask, q.device, window), float("-inf"))[0, 0]
    best = s.max(-1, keepdim=True).values
    pos = torch.arange(Nk, device=q.device).expand(Nq, Nk)
    first = torch.where((s == best) & torch.isfinite(best), pos, Nk).min(-1).values
    return torch.where(first == Nk, -1, first)


class Launches:
    """Stands in for a jit kernel (as ``triton.heuristics`` wraps it): records each launch's
    keywords, then runs the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.calls, self.arg_names = kernel, [], kernel.arg_names

    def run(self, *args, grid, warmup, **kwargs):
        self.calls.append(kwargs)
        return self.kernel.run(*args, grid=grid, warmup=warmup, **kwargs)

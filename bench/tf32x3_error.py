"""Error of fp32 attention when its two matmuls run as 3xTF32 (how the fused kernel runs fp32
inputs on tensor cores, ``tl.dot(..., input_precision="tf32x3")``), against float64.

    python -m bench.tf32x3_error            # writes bench/results/tf32x3-error-<date>.json

No GPU needed: the tensor-core arithmetic is emulated in PyTorch on the CPU (operands rounded to
TF32, 10-bit mantissa, round-to-nearest-away as ``cvt.rna.tf32.f32``; 3xTF32 = big*big + big*small
+ small*big with fp32 accumulation), beside plain fp32 and 1xTF32 for scale. This is an emulation
of the arithmetic, not a run of the kernel: the GPU run of the test suite (fp32 vs float64) is the
check of the kernel itself.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 to TF32 (keep 10 mantissa bits), nearest, ties away from zero."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def matmul(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "fp32":
        return a @ b
    ab, bb = to_tf32(a), to_tf32(b)
    if mode == "tf32":
        return ab @ bb
    as_, bs = to_tf32(a - ab), to_tf32(b - bb)
    return ab @ bs + as_ @ bb + ab @ bb  # tf32x3: small products first, as Triton does


def attention(q, k, v, mode: str):
    """Causal softmax attention with the two matmuls in ``mode``; returns (out, lse, entropy)."""
    n, d = q.shape[-2], q.shape[-1]
    s = matmul(q, k.transpose(-1, -2), mode) * d ** -0.5
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    ent = -(p * torch.where(p > 0, torch.log(p), torch.zeros_like(p))).sum(-1)
    return matmul(p, v, mode), lse, ent


def main() -> int:
    torch.manual_seed(0)
    rows = []
    for d in (64, 128):
        for sharp in (1.0, 4.0):
            q = torch.randn(4, 512, d) * sharp
            k, v = torch.randn(4, 512, d), torch.randn(4, 512, d)
            ref = attention(q.double(), k.double(), v.double(), "fp32")
            for mode in ("fp32", "tf32x3", "tf32"):
                got = attention(q, k, v, mode)
                err = {name: (g.double() - r).abs().max().item() for name, g, r in zip(("out", "lse", "entropy"), got, ref)}
                rows.append(dict(head_dim=d, q_scale=sharp, mode=mode, **{f"max_abs_err_{k}": v for k, v in err.items()}))
                print(json.dumps(rows[-1]))
    date = datetime.date.today().isoformat()
    doc = dict(kind="emulated arithmetic on CPU (not a kernel run)", date=date, torch=torch.__version__,
               shape="B*H=4, N=512 causal, q ~ N(0, q_scale^2), k, v ~ N(0, 1)", rows=rows)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"tf32x3-error-{date}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

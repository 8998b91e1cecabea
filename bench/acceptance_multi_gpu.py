"""Multi-GPU check of a GPU acceptance run: the fused kernel on the second GPU against the
float64 reference (a launch that ignored the tensors' device would fail or differ here).
Writes a skip with its reason on a machine with fewer than two GPUs.

    python -m bench.acceptance_multi_gpu --json result.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

# The GPU tests' bf16 tolerances (tests/kernel_cases.py): output, statistics.
OUT_TOL_BF16, STAT_TOL_BF16 = 2e-2, 2e-3


def check_device(device: str, backend: str = "triton") -> dict:
    """Max |error| of output and sink on ``device`` (bf16, with padding and statistics), launched
    while another device is the current one."""
    from circuit_stats.kernels import attention_with_stats, attention_with_stats_naive

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 128, generator=g) for _ in range(3))
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, :37] = False
    kw = dict(offsets=(1, 2), entropy=True)
    ref_out, ref = attention_with_stats_naive(*(t.bfloat16().double() for t in (q, k, v)), key_padding_mask=mask, **kw)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(0)  # the current device is NOT the tensors' device
    out, stats = attention_with_stats(*(t.to(dev, torch.bfloat16) for t in (q, k, v)),
                                      key_padding_mask=mask.to(dev), backend=backend, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return {"out_err": float((out.double().cpu() - ref_out).abs().max()),
            "sink_err": float((stats.sink.double().cpu() - ref.sink).abs().max()), "device": str(out.device)}


def within_tolerance(result: dict) -> bool:
    return result["out_err"] <= OUT_TOL_BF16 and result["sink_err"] <= STAT_TOL_BF16


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        result = {"status": "skipped", "reason": f"needs 2 GPUs, this machine has {n}"}
        a.json.write_text(json.dumps(result))
        print(result["reason"])
        return 0
    result = check_device("cuda:1")
    ok = within_tolerance(result) and result["device"] == "cuda:1"
    a.json.write_text(json.dumps({**result, "status": "ok" if ok else "failed"}))
    print(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

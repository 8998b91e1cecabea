"""The kernel benchmark of a GPU acceptance run, one result file (``kernel-<device>-<date>``):

* ``bench_kernel``'s comparison at D = 128: ours (plain, sink + offsets, every statistic) beside
  SDPA flash, FlexAttention and eager;
* the plain path beside SDPA flash at D = 64 and 256 (issue 22 item 5: which is the fastest exact
  path outside ``record()``, where the D = 128 rows alone cannot decide).

    python -m bench.acceptance_kernel --out-dir OUT [--lengths 2048,8192]
    python -m bench.acceptance_kernel --quick --out-dir OUT   # tiny sizes on the CPU (harness check)

bf16, B = 4, H = 16, causal; autotuned (the first call of each length bucket tunes, outside the timing).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch

from bench.bench_kernel import COLUMNS, OFFSETS, VARIANTS, run_sweep
from bench.common import environment, refuses_cpu, timing_arguments, write_results

MAIN_HEAD_DIM = 128
PLAIN_HEAD_DIMS = (64, 256)
PLAIN_VARIANTS = ("ours-plain", "sdpa-flash")
SIZES = {"gpu": dict(dtype="bfloat16", lengths="2048,8192", B=4, H=16, rep=20, main_d=MAIN_HEAD_DIM,
                     plain_d=PLAIN_HEAD_DIMS, variants=VARIANTS),
         # FlexAttention is left out on the CPU (as bench_kernel --quick does)
         "quick": dict(dtype="float32", lengths="48", B=1, H=2, rep=3, main_d=16, plain_d=(32,),
                       variants=[v for v in VARIANTS if v != "flex-lse-gather"])}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = timing_arguments(__doc__.splitlines()[0])
    p.add_argument("--lengths", default=None, help="comma list (default 2048,8192)")
    a = p.parse_args(argv)
    if refuses_cpu(a, "the acceptance kernel benchmark"):
        return 2
    s = SIZES["quick" if a.quick else "gpu"]
    dtype, lengths = [getattr(torch, s["dtype"])], [int(x) for x in (a.lengths or s["lengths"]).split(",")]
    backend = "triton" if a.device.startswith("cuda") else "torch"
    main_variants = sorted(s["variants"], key=lambda v: v != "ours-all")  # ours-all first: the sink reference
    rows = run_sweep(a.device, dtype, [s["main_d"]], lengths, s["B"], s["H"], main_variants, backend, s["rep"])
    rows += run_sweep(a.device, dtype, list(s["plain_d"]), lengths, s["B"], s["H"], list(PLAIN_VARIANTS), backend,
                      s["rep"])
    jpath, mpath = write_results("kernel" + ("-quick" if a.quick else ""), environment(a.device), rows, COLUMNS,
                                 a.out_dir, extra={"backend": backend, "quick": a.quick, "offsets": list(OFFSETS)})
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

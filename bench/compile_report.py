"""Static compile report: what the fused kernel costs on an H100 (sm_90), without a GPU.

    python -m bench.compile_report                 # the default set, every config kept
    python -m bench.compile_report --quick         # D=64/128 bf16, one config per variant
    python -m bench.compile_report --d 128 --stats all --dtype bf16 --jobs 2
    python -m bench.compile_report --kernel key_mass  # the key-mass pass beside the fused "none"

For every head-dim class, dtype and statistics set, every tile config the autotuner keeps
(``autotune.candidate_configs``) is compiled for sm_90 through the launcher's own
argument builder (``kernels.aot``), and the report lists registers, spill bytes, shared memory,
tensor-core instruction use, and the hot loop's cost: warp-instructions per 1000 attention
scores in the unmasked key/value loop (instructions of one iteration x warps / (BLOCK_M x
BLOCK_N)), beside the Triton fused-attention tutorial's forward compiled the same way.

These are static compile figures: what the GPU will execute, not how fast it runs. Writes
``bench/results/compile-sm<arch>-<date>.json`` and a Markdown table beside it. Run without
``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# A fresh Triton cache: a cached kernel skips ptxas, whose log is where registers and spills come
# from (a cache hit would report no registers and no spills).
if "TRITON_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile-report-triton-cache-")

import torch  # noqa: E402
import triton  # noqa: E402

from circuit_stats.kernels.sass_loops import mma_loops, parse  # noqa: E402
from circuit_stats.kernels import aot, autotune  # noqa: E402
from circuit_stats.kernels.triton_common import TOP1_CHUNK, head_block, smem_bytes  # noqa: E402
from circuit_stats.kernels.triton_decode import ROWS_BLOCK  # noqa: E402
from circuit_stats.kernels import triton_key_mass as tkm  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The Triton fused-attention tutorial's forward (triton 3.9), bf16, causal, sm_90, Nq = Nk = 4096,
# compiled the same way (figures from the issue / ../shared/tools/gpu-compile/README.md).
TUTORIAL = [
    dict(head_dim=64, tile="128x64 w8 s3", loop_per_1k=302.7, registers=107, spills=0),
    dict(head_dim=64, tile="64x64 w4 s3", loop_per_1k=298.8, registers=None, spills=0),
    dict(head_dim=128, tile="128x64 w8 s3", loop_per_1k=350.6, registers=151, spills=0),
    dict(head_dim=128, tile="64x64 w4 s3", loop_per_1k=350.6, registers=None, spills=0),
    dict(head_dim=128, tile="128x128 w8 s3", loop_per_1k=253.4, registers=219, spills=0),
    dict(head_dim=256, tile="64x64 w4 s2", loop_per_1k=None, registers=206, spills=0),
]
# Targets of issue 11 (bf16, sm_90): none <= 1.05x tutorial at D=64/128; all <= 1.6x none.
TUTORIAL_BEST = {64: 298.8, 128: 253.4}


LENGTHS = {"long": (4096, 4096), "short": (200, 200), "decode": (1, 4096)}


def grid_variants(dims, dtypes, stats_sets, buckets, kernel: str = "fused",
                  key_padding=(False,)) -> list[aot.CompileVariant]:
    return [aot.CompileVariant(d, dt, st, q_len=LENGTHS[b][0], k_len=LENGTHS[b][1], padded=pad, kernel=kernel)
            for d in dims for dt in dtypes for st in stats_sets for b in buckets for pad in key_padding]


def key_mass_variants(dims, dtypes, stats_sets, buckets) -> list[aot.CompileVariant]:
    """The key-mass pass (``stats``: "none" plain, "modifiers" a window and softcap) and, to
    compare with, the fused kernel's "none" variants of the same shapes."""
    return grid_variants(dims, dtypes, stats_sets, buckets, "key_mass") + grid_variants(dims, dtypes, ["none"], buckets)


def default_variants() -> list[aot.CompileVariant]:
    """The committed report: bf16 prefill at every head-dim class with every statistics set (no
    point statistics at D = 16/32), fp16 and fp32 at D = 128 (fp32 also 64), bf16 decode."""
    return (grid_variants((64, 80, 128, 256), ["bf16"], STATS, ["long"])
            + grid_variants((16, 32), ["bf16"], ["none", "all"], ["long"])
            + grid_variants((128,), ["fp16"], ["none", "all"], ["long"])
            + grid_variants((64, 128), ["fp32"], ["none", "all"], ["long"])
            + grid_variants((64, 128), ["bf16"], ["none", "all"], ["decode"]))


STATS = ["none", "point", "all"]


def rescore_chunks(sass: str, loop: dict, block_n: int) -> int:
    """Iterations of the re-scoring ``loop`` per tile: ``BLOCK_N / TOP1_CHUNK`` when it is the
    chunk loop (nested in the loop over winning tiles), 1 when the chunks were unrolled."""
    _, all_loops = parse(sass)
    nested = any(lo < loop["start"] and loop["end"] < hi for lo, hi in all_loops)
    return max(1, block_n // TOP1_CHUNK.value) if nested else 1


def report_row(variant: aot.CompileVariant, config: triton.Config, arch: int, kept: bool = True,
               baseline: bool = False) -> dict:
    """Compile one (variant, config) and return its figures (or its error). ``baseline``: a
    no-statistics row compiled only as the same-tile reference of a statistics set's kept tile."""
    # The split-decode kernel's row tile is fixed (ROWS_BLOCK packed rows), not autotuned.
    tile = dict(BLOCK_M=config.kwargs.get("BLOCK_M", ROWS_BLOCK), BLOCK_N=config.kwargs["BLOCK_N"],
                num_warps=config.num_warps, num_stages=config.num_stages, kept=kept, **({"baseline": True} if baseline
                                                                                         else {}))
    try:
        row, compiled = aot.compile_variant(variant, config, arch)
        row.update(kept=kept, BLOCK_M=tile["BLOCK_M"], **({"baseline": True} if baseline else {}))
    except Exception as e:  # a compile error is a result: record it, the exit status shows it
        return dict(dataclasses.asdict(variant), arch=arch, **tile, error=f"{type(e).__name__}: {e}"[-1000:])
    sass = compiled.asm["sass"]
    loops = mma_loops(sass)
    # With top1 the last loop holding tensor-core instructions is the epilogue's re-scoring of the
    # winning tiles (q k^T only); the others are key/value loops, and the unmasked one is the
    # cheapest (the masked window-edge and diagonal stages and the local/span segments do the same
    # work and more): the one that runs over almost every key.
    rescore = loops.pop() if loops and aot.variant_request(variant)[0].top1 else None
    hot = min(loops, key=lambda lp: lp["total"]) if loops else {}
    if rescore:  # warp-instructions per re-scored tile (BLOCK_M x BLOCK_N scores)
        row["top1_rescore_per_tile"] = rescore["total"] * tile["num_warps"] * rescore_chunks(sass, rescore,
                                                                                            tile["BLOCK_N"])
    scores = tile["BLOCK_M"] * tile["BLOCK_N"]
    smem = (lambda bm, bn, *rest: tkm.smem_bytes(bn, bm, *rest)) if variant.kernel == "key_mass" else smem_bytes
    row["smem_estimate_bytes"] = smem(tile["BLOCK_M"], tile["BLOCK_N"], tile["num_stages"],
                                      head_block(variant.head_dim), aot.DTYPES[variant.dtype].itemsize)
    row["hot_loop"] = {k: v for k, v in hot.items() if k not in ("start", "end")}
    row["hot_loop_per_1k_scores"] = round(1000 * hot.get("total", 0) * tile["num_warps"] / scores, 1) if hot else None
    # special-function results (MUFU: exp2, tanh, reciprocal) per score: the SFU pipe delivers 16
    # per clock per SM on sm_80 / sm_90, an eighth of the FP32 lanes' rate
    mufu = hot.get("mufu_ex2", 0) + hot.get("mufu_other", 0)
    row["hot_loop_mufu_per_score"] = round(mufu * 32 * tile["num_warps"] / scores, 2) if hot else None
    return row


def variant_tile(r: dict) -> tuple:
    """A row's kernel, head dim, dtype, query length, key padding and tile: rows that differ only in
    statistics."""
    return (r.get("kernel", "fused"), r["head_dim"], r["dtype"], r["q_len"], r.get("padded", False),
            (r["BLOCK_M"], r["BLOCK_N"], r["num_warps"], r["num_stages"]))


def spill_cell(r: dict) -> str:
    """Spill-store bytes, with the spill instructions inside the key loops where there are any bytes."""
    spill = r["spill_store_bytes"]
    return f"{spill} ({r.get('loop_spill_instructions', 0)} instr. in loops)" if spill else "0"


def markdown(doc: dict) -> str:
    lines = [
        f"# Static compile report, sm_{doc['arch']} ({doc['date']})",
        "",
        f"triton {doc['triton']}, torch {doc['torch']}; compiled on a CPU with no GPU "
        "(`python -m bench.compile_report`). **Static compile figures, not timings.**",
        "`loop/1k` = warp-instructions per 1000 attention scores in the unmasked key/value loop; `MUFU/score` =",
        "special-function results (exp2, tanh, reciprocal) per score in that loop.",
        "",
        "| variant | tile | regs | spill B | smem KB | tensor cores | loop/1k | MUFU/score | x tutorial | x none | x fused none |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    none_best, fused_none = {}, {}
    for r in doc["rows"]:
        if r.get("stats") == "none" and r.get("hot_loop_per_1k_scores"):
            key = variant_tile(r)
            none_best[key] = r["hot_loop_per_1k_scores"]
            if key[0] == "fused" and r.get("kept", True):  # the fused kernel's best kept tile
                fused_none[key[1:4]] = min(none_best[key], fused_none.get(key[1:4], none_best[key]))
    for r in doc["rows"]:
        tile = f"{r['BLOCK_M']}x{r['BLOCK_N']} w{r['num_warps']} s{r['num_stages']}"
        kernel = r.get("kernel", "fused")
        name = (f"D{r['head_dim']} {r['dtype']} {r['stats']}{' pad' if r.get('padded') else ''} Nq={r['q_len']}"
                + ("" if kernel == "fused" else f" {kernel}")
                + (" (same-tile reference)" if r.get("baseline") else "" if r.get("kept", True) else " (pruned)"))
        if "error" in r:
            lines.append(f"| {name} | {tile} | FAILED: {r['error'][:120]} | | | | | | | | |")
            continue
        tc = "wgmma" if r["hgmma"] else ("mma.sync" if r["hmma"] else "none")
        per = r["hot_loop_per_1k_scores"]
        fused_bf16 = r["dtype"] == "bf16" and kernel == "fused"  # what the tutorial is
        tut = TUTORIAL_BEST.get(r["head_dim"]) if fused_bf16 else None
        key = variant_tile(r)
        base = none_best.get(key)
        fused = fused_none.get(key[1:4]) if kernel == "key_mass" else None
        lines.append(
            f"| {name} | {tile} | {r['registers']} | {spill_cell(r)} | {r['shared_bytes'] / 1024:.0f} | {tc} | "
            f"{per if per is not None else '-'} | {r.get('hot_loop_mufu_per_score', '-')} | "
            f"{f'{per / tut:.2f}' if per and tut else '-'} | "
            f"{f'{per / base:.2f}' if per and base else '-'} | {f'{per / fused:.2f}' if per and fused else '-'} |")
    lines += ["", "Triton tutorial forward (bf16, causal, sm_90, Nq = Nk = 4096), compiled the same way:", "",
              "| D | tile | regs | spills | loop/1k |", "|---:|---|---:|---:|---:|"]
    for t in doc["tutorial"]:
        lines.append(f"| {t['head_dim']} | {t['tile']} | {t['registers'] or '-'} | {t['spills']} | {t['loop_per_1k'] or '-'} |")
    lines += ["", "`x tutorial` compares with the tutorial's best tile at the same D (64: 298.8, 128: 253.4);",
              "`x none` with the same kernel and tile and no statistics (compiled for the comparison where the",
              "no-statistics launch keeps other tiles: \"same-tile reference\" rows); `x fused none` (key_mass rows) with the fused",
              "kernel's best kept tile with no statistics at the same D, dtype and length. The key-mass tile is",
              "BLOCK_M queries x BLOCK_N keys as well; its BLOCK_N keys stay on chip while the queries stream."]
    return "\n".join(lines) + "\n"


def same_tile_references(jobs: list) -> list:
    """No-statistics jobs on the kept fused tiles of every statistics set whose tile the
    no-statistics launch does not keep: every kept tile gets its ``x none``."""
    def tile(c: triton.Config) -> tuple:
        return c.kwargs.get("BLOCK_M"), c.kwargs.get("BLOCK_N"), c.num_warps, c.num_stages

    have = {(v, tile(c)) for v, c, _, _ in jobs if v.stats == "none"}
    extra = {}
    for v, c, arch, kept in jobs:
        base = dataclasses.replace(v, stats="none")
        if kept and v.kernel == "fused" and v.stats != "none" and (base, tile(c)) not in have:
            extra.setdefault((base, tile(c)), (base, c, arch, False, True))
    return list(extra.values())


def _job(args):
    return report_row(*args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=aot.ARCHS)
    ap.add_argument("--d", default=None, help="head dims (comma-separated); with --dtype/--stats/--bucket "
                    "a grid instead of the default set")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--stats", default="none,point,all")
    ap.add_argument("--bucket", default="long", help="long (Nq=Nk=4096), short (200), decode (Nq=1)")
    ap.add_argument("--kernel", default="fused", choices=("fused", "split", "key_mass"),
                    help="with --d: the fused kernel, the split-decode kernel (use --bucket decode) or the key-mass "
                         "pass (stats none/modifiers, beside the fused kernel's none)")
    ap.add_argument("--key-padding", action="store_true", help="with --d: each variant also with a key padding "
                    "mask (its loads in the key loop)")
    ap.add_argument("--quick", action="store_true", help="D=64,128 bf16 long prefill, one config per variant")
    ap.add_argument("--all-configs", action="store_true", help="also compile the configs the pruner drops")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=None, help="output path stem (default bench/results/compile-sm<arch>-<date>)")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernel by a Python function")
    if a.quick:
        a.d, a.dtype, a.bucket = "64,128", "bf16", "long"
    if a.kernel == "key_mass":
        stats = ["none", "modifiers"] if a.stats == "none,point,all" else a.stats.split(",")
        variants = key_mass_variants([int(x) for x in (a.d or "64,128,256").split(",")], a.dtype.split(","), stats,
                                     a.bucket.split(","))
    elif a.d is None:
        variants = default_variants()
    else:
        variants = grid_variants([int(x) for x in a.d.split(",")], a.dtype.split(","), a.stats.split(","),
                                 a.bucket.split(","), a.kernel, (False, True) if a.key_padding else (False,))
    jobs = []
    for v in variants:
        kept = aot.candidate_configs(v)
        tuned = tkm if v.kernel == "key_mass" else autotune
        every = (autotune.SPLIT_CONFIGS if v.kernel == "split" else tuned.DECODE_CONFIGS if v.q_len <= 16
                 else tuned.PREFILL_CONFIGS)
        cfgs = kept[:1] if a.quick else (every if a.all_configs else kept)
        jobs += [(v, c, a.arch, any(c is k for k in kept)) for c in cfgs]
    jobs += same_tile_references(jobs)
    print(f"compiling {len(jobs)} (variant, config) pairs for sm_{a.arch}", file=sys.stderr)
    rows = []
    with ProcessPoolExecutor(a.jobs) if a.jobs > 1 else contextlib.nullcontext() as pool:
        for r in (pool.map(_job, jobs) if pool else map(_job, jobs)):  # print each row as it comes
            rows.append(r)
            print(f"[{len(rows)}/{len(jobs)}] D{r['head_dim']:<3} {r['dtype']} {r['stats']:5s} Nq={r['q_len']:<4} "
                  f"{r['BLOCK_M']}x{r['BLOCK_N']} w{r['num_warps']} s{r['num_stages']}: " + (r["error"][:200] if "error" in r
                  else f"regs {r['registers']} spill {r['spill_store_bytes']} smem {r['shared_bytes']} "
                  f"loop/1k {r['hot_loop_per_1k_scores']}"), file=sys.stderr, flush=True)
    date = datetime.date.today().isoformat()
    doc = dict(kind="static compile report (not timings)", arch=a.arch, date=date, triton=triton.__version__,
               torch=torch.__version__, python=platform.python_version(), device="none (compiled on CPU)",
               command="python -m bench.compile_report " + " ".join(argv if argv is not None else sys.argv[1:]),
               tutorial=TUTORIAL, rows=rows)
    stem = a.out or os.path.join(RESULTS, f"compile-sm{a.arch}-{date}")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    for path, text in ((stem + ".json", json.dumps(doc, indent=1)), (stem + ".md", markdown(doc))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)  # never a partial file under the final name
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

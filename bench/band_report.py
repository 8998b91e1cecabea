"""Static cost of token matching out of the fused loop (issue 23): the fused kernel's unmasked key
loop with and without in-loop token matching, the band kernel's loop, and the band's work
(scores it computes / causal scores) measured on simulated token streams.

Compiled on a CPU with no GPU, like ``bench.compile_report``; the band work is measured by
running the launcher's own layout (``triton_token_match.token_bands``) on each stream. Writes
``bench/results/band-sm<arch>-<date>-triton<version>.{json,md}``. Static figures, not timings.

    python -m bench.band_report [--arch 90] [--d 64,128] [--lengths 1024,4096,16384,32768]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
if "TRITON_CACHE_DIR" not in os.environ:  # a fresh cache: a cache hit skips ptxas (no register figures)
    import tempfile

    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="band-report-triton-cache-")

import torch  # noqa: E402
import triton  # noqa: E402

from circuit_stats.atomic import atomic_write  # noqa: E402
from circuit_stats.kernels import aot, autotune  # noqa: E402
from circuit_stats.kernels import triton_attention as ta  # noqa: E402
from circuit_stats.kernels import triton_token_match as tm  # noqa: E402
from circuit_stats.kernels.side_inputs import SideInputs  # noqa: E402
from circuit_stats.kernels.sass_loops import mma_loops  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VOCAB = 50_000


# ----------------------------------------------------------------------------------------------
# Simulated token streams (one sequence of n tokens each).

def zipf_ids(n: int, vocab: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    weights = torch.arange(1, vocab + 1, dtype=torch.float64) ** -exponent
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def prose(n: int, gen: torch.Generator) -> torch.Tensor:
    """Natural-language-like: i.i.d. Zipf (exponent 1.0) over a 50k vocabulary."""
    return zipf_ids(n, VOCAB, 1.0, gen)


def code(n: int, gen: torch.Generator) -> torch.Tensor:
    """Code-like: lines of 4-16 Zipf (exponent 1.2) tokens over a 20k vocabulary, each line ending
    in a newline token, 30% of the lines copies of an earlier line."""
    lines: list[torch.Tensor] = []
    total = 0
    while total < n:
        if lines and torch.rand((), generator=gen).item() < 0.3:
            line = lines[int(torch.randint(len(lines), (), generator=gen))]
        else:
            length = int(torch.randint(4, 17, (), generator=gen))
            line = torch.cat([zipf_ids(length, 20_000, 1.2, gen) + 1, torch.zeros(1, dtype=torch.long)])
        lines.append(line)
        total += len(line)
    return torch.cat(lines)[:n]


def repeated_random(n: int, gen: torch.Generator) -> torch.Tensor:
    """The induction benchmark: 512 uniformly random tokens, repeated to length n."""
    segment = torch.randint(VOCAB, (512,), generator=gen)
    return segment.repeat(-(-n // 512))[:n]


def few_tokens(n: int, gen: torch.Generator) -> torch.Tensor:
    """The worst case: 4 distinct tokens, uniformly (every band spans most keys)."""
    return torch.randint(4, (n,), generator=gen)


STREAMS = {"prose": prose, "code": code, "repeated-random": repeated_random, "4-tokens": few_tokens}


def band_work(tok: torch.Tensor, block_m: int, block_n: int, window=None) -> dict:
    """Scores the band kernel computes for one sequence ``tok [N]`` (queries = keys = N): per query
    block, ``block_m`` rows times each key run rounded up to whole ``block_n`` tiles, duplicates
    and induction, over the causal scores ``N (N + 1) / 2``."""
    n = tok.numel()
    side = SideInputs.build(batch=1, k_len=n, device=tok.device, token_ids=tok[None])
    bands = tm.token_bands(side, n, block_m, window)
    runs = (bands.ranges[0, :, 1::2] - bands.ranges[0, :, 0::2]).long()  # [n_blocks, 2]: dup, induction
    tiles = (runs + block_n - 1) // block_n
    causal = n * (n + 1) / 2
    return dict(band_fraction=round(float(tiles.sum()) * block_m * block_n / causal, 5),
                dup_fraction=round(float(tiles[:, 0].sum()) * block_m * block_n / causal, 5),
                exact_run_fraction=round(float(runs.sum()) * block_m / causal, 5))


# ----------------------------------------------------------------------------------------------
# Compile figures.

def hot_loop_per_1k(compiled, rows: int, cols: int, warps: int) -> tuple[float, dict]:
    """The cheapest MMA loop's warp-instructions per 1000 scores of a ``rows x cols`` tile."""
    loops = mma_loops(compiled.asm["sass"])
    hot = min(loops, key=lambda lp: lp["total"])
    return round(1000 * hot["total"] * warps / (rows * cols), 1), {k: v for k, v in hot.items()
                                                                   if k not in ("start", "end")}


def fused_row(variant: aot.CompileVariant, config: triton.Config, arch: int, tokens: bool) -> dict:
    """Compile the fused kernel for ``variant`` with (``tokens``) or without in-loop token matching."""
    request, side = aot.variant_request(variant)
    if not tokens:
        side = dataclasses.replace(side, token_ids=None, prev_token_ids=None)
    launch = ta.launch_arguments(*aot.variant_inputs(variant), request, side, tensors=aot.SpecTensors())
    compiled, log = aot.compile_kernel(aot.kernel_function(), launch.args, launch.constexprs, config, arch)
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    per, hot = hot_loop_per_1k(compiled, bm, bn, config.num_warps)
    return dict(kernel="fused", head_dim=variant.head_dim, stats=variant.stats, token_match="loop" if tokens else "band",
                tile=f"{bm}x{bn} w{config.num_warps} s{config.num_stages}", **aot.resource_usage(compiled, log),
                loop_per_1k=per, hot_loop=hot)


def band_row(variant: aot.CompileVariant, arch: int) -> dict:
    fn, args, constexprs = aot.band_launch(variant)
    config = tm.band_config()
    compiled, log = aot.compile_kernel(fn, args, constexprs, config, arch)
    per, hot = hot_loop_per_1k(compiled, constexprs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps)
    return dict(kernel="band", head_dim=variant.head_dim, stats=variant.stats,
                tile=f"{constexprs['BLOCK_M']}x{config.kwargs['BLOCK_N']} w{config.num_warps} s{config.num_stages}",
                **aot.resource_usage(compiled, log), loop_per_1k=per, hot_loop=hot)


def compile_rows(dims, arch: int) -> list[dict]:
    rows = []
    for d in dims:
        for stats in ("none", "all", "modifiers", "full"):
            variant = aot.CompileVariant(d, "bf16", stats)
            for tokens in ((False,) if stats == "none" else (True, False)):
                request, side = aot.variant_request(variant)
                if not tokens:
                    side = dataclasses.replace(side, token_ids=None, prev_token_ids=None)
                launch = ta.launch_arguments(*aot.variant_inputs(variant), request, side, tensors=aot.SpecTensors())
                kept = autotune.candidate_configs(launch.bucket, head_dim=d, elt_bytes=2,
                                                  loop_level=autotune.loop_level(launch.constexprs))
                for config in kept:
                    rows.append(fused_row(variant, config, arch, tokens))
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "hot_loop"}), file=sys.stderr, flush=True)
            if stats in ("all", "modifiers"):
                rows.append(band_row(aot.CompileVariant(d, "bf16", stats, kernel="band"), arch))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "hot_loop"}), file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Report.

def markdown(doc: dict) -> str:
    lines = [f"# Token matching out of the fused loop: static figures, sm_{doc['arch']} ({doc['date']})", "",
             f"triton {doc['triton']}, torch {doc['torch']}; compiled on a CPU with no GPU (`{doc['command']}`). "
             "**Static compile figures and measured band areas, not timings.** `loop/1k` = warp-instructions "
             "per 1000 scores in the cheapest key loop (fused: the unmasked loop; band: one of its two loops).", "",
             "## Fused kernel, unmasked key loop: in-loop token matching vs none (bf16, Nq = Nk = 4096)", "",
             "| D | statistics | tile | regs (loop / band) | spill B (loop / band) | loop/1k in-loop | loop/1k without | "
             "x none in-loop | x none without |", "|---:|---|---|---|---|---:|---:|---:|---:|"]
    fused = [r for r in doc["compile"] if r["kernel"] == "fused"]
    none = {(r["head_dim"], r["tile"]): r["loop_per_1k"] for r in fused if r["stats"] == "none"}
    for r in fused:
        if r["token_match"] != "loop":
            continue
        other = next((o for o in fused if o["token_match"] == "band" and o["stats"] == r["stats"]
                      and o["head_dim"] == r["head_dim"] and o["tile"] == r["tile"]), None)
        base = none.get((r["head_dim"], r["tile"]))
        ratio = lambda x: f"{x / base:.2f}" if x and base else "-"  # noqa: E731
        lines.append(f"| {r['head_dim']} | {r['stats']} | {r['tile']} | {r['registers']} / {other and other['registers']} | "
                     f"{r['spill_store_bytes']} / {other and other['spill_store_bytes']} | {r['loop_per_1k']} | "
                     f"{other and other['loop_per_1k']} | {ratio(r['loop_per_1k'])} | {ratio(other and other['loop_per_1k'])} |")
    lines += ["", "Tiles the autotuner keeps for each launch; a tile kept only without token matching has no in-loop row. "
              "`x none`: the same tile with no statistics.", "",
              "## Band kernel (bf16, per score of the band)", "",
              "| D | statistics | tile | regs | spill B | smem KB | tensor cores | loop/1k |", "|---:|---|---|---:|---:|---:|---|---:|"]
    for r in doc["compile"]:
        if r["kernel"] == "band":
            tc = "wgmma" if r["hgmma"] else ("mma.sync" if r["hmma"] else "none")
            lines.append(f"| {r['head_dim']} | {r['stats']} | {r['tile']} | {r['registers']} | {r['spill_store_bytes']} | "
                         f"{r['shared_bytes'] / 1024:.0f} | {tc} | {r['loop_per_1k']} |")
    lines += ["", f"## Band work / causal scores (BLOCK_M = {doc['block'][0]}, key tiles of {doc['block'][1]}; "
              f"mean of {doc['seeds']} streams, [max])", "",
              "Both passes (duplicates + induction), whole key tiles; `dup` the duplicate pass alone; `exact` the "
              "runs without rounding to tiles. Streams: " + "; ".join(f"{k}: {v}" for k, v in doc["streams"].items()), "",
              "| stream | N | band / causal | dup | exact |", "|---|---:|---:|---:|---:|"]
    for r in doc["work"]:
        lines.append(f"| {r['stream']} | {r['n']} | {r['band_fraction']:.4f} [{r['band_fraction_max']:.4f}] | "
                     f"{r['dup_fraction']:.4f} | {r['exact_run_fraction']:.4f} |")
    lines += ["", "## All statistics end to end, static (main loop without token matching + band loop x band / causal)",
              "", "`(without + band loop/1k x band fraction) / none`, per D, on the kept tile with the cheapest loop "
              "without token matching, `none` on the same tile: an estimate combined from the measured figures "
              "above, not a timing.", "",
              "| D | tile | stream | N | in-loop x none | band x none |", "|---:|---|---|---:|---:|---:|"]
    fmt = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
    for r in doc["combined"]:
        lines.append(f"| {r['head_dim']} | {r['tile']} | {r['stream']} | {r['n']} | {fmt(r['in_loop_x_none'])} | "
                     f"{fmt(r['band_x_none'])} |")
    return "\n".join(lines) + "\n"


def combined(compile_rows_: list[dict], work: list[dict]) -> list[dict]:
    """All statistics ("all"), per D, on the kept tile with the cheapest loop without token
    matching: ``(without + band loop x band fraction) / none`` and ``in-loop / none``, "none" on
    the same tile."""
    out = []
    fused = [r for r in compile_rows_ if r["kernel"] == "fused"]
    for d in sorted({r["head_dim"] for r in compile_rows_}):
        def loop(stats, match, tile):
            return next((r["loop_per_1k"] for r in fused if r["head_dim"] == d and r["stats"] == stats
                         and r.get("token_match") == match and r["tile"] == tile), None)
        best = min((r for r in fused if r["head_dim"] == d and r["stats"] == "all" and r["token_match"] == "band"),
                   key=lambda r: r["loop_per_1k"])
        tile = best["tile"]
        none, in_loop = loop("none", "band", tile), loop("all", "loop", tile)
        band = next(r["loop_per_1k"] for r in compile_rows_ if r["kernel"] == "band" and r["head_dim"] == d
                    and r["stats"] == "all")
        for w in work:
            out.append(dict(head_dim=d, tile=tile, stream=w["stream"], n=w["n"],
                            in_loop_x_none=in_loop / none if in_loop and none else None,
                            band_x_none=(best["loop_per_1k"] + band * w["band_fraction"]) / none if none else None))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=aot.ARCHS)
    ap.add_argument("--d", default="64,128")
    ap.add_argument("--lengths", default="1024,4096,16384,32768")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="output path stem (default bench/results/band-sm<arch>-<date>-triton<v>)")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernels by Python functions")
    block = (tm.BAND_BLOCK[0], tm.BAND_BLOCK[1])
    work = []
    for name, make in STREAMS.items():
        for n in (int(x) for x in a.lengths.split(",")):
            runs = [band_work(make(n, torch.Generator().manual_seed(s)), *block) for s in range(a.seeds)]
            row = {k: round(sum(r[k] for r in runs) / len(runs), 5) for k in runs[0]}
            work.append(dict(stream=name, n=n, **row, band_fraction_max=max(r["band_fraction"] for r in runs)))
            print(json.dumps(work[-1]), file=sys.stderr, flush=True)
    rows = compile_rows([int(x) for x in a.d.split(",")], a.arch)
    date = datetime.date.today().isoformat()
    doc = dict(kind="static compile figures and measured band areas (not timings)", arch=a.arch, date=date,
               triton=triton.__version__, torch=torch.__version__, python=platform.python_version(),
               command="python -m bench.band_report " + " ".join(argv if argv is not None else sys.argv[1:]),
               block=block, seeds=a.seeds, streams={k: f.__doc__.split("\n")[0] for k, f in STREAMS.items()},
               work=work, compile=rows, combined=combined(rows, [w for w in work if w["stream"] != "4-tokens"]))
    stem = a.out or os.path.join(RESULTS, f"band-sm{a.arch}-{date}-triton{triton.__version__.rsplit('.', 1)[0]}")
    for path, text in ((stem + ".json", json.dumps(doc, indent=1)), (stem + ".md", markdown(doc))):
        atomic_write(Path(path), lambda tmp, text=text: Path(tmp).write_text(text))  # never a partial file
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

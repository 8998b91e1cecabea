"""Static cost of token matching out of the fused loop (issue 23): the fused kernel's unmasked key
loop with and without in-loop token matching, the band kernel's two loops (tiles inside every
row's match interval, unmasked; the others, masked), and the band's work (scores it computes /
causal scores, per loop) measured on simulated token streams.

Compiled on a CPU with no GPU, like ``bench.compile_report``; the band work is measured by
running the launcher's own layout (``triton_token_match.token_bands``) on each stream and the
kernel's tile split (:func:`tile_split`). ``--before JSON`` puts an earlier report's band figures
beside the new ones; ``--fused-from JSON`` takes the fused kernel's rows from a report of the same
Triton instead of recompiling them (the band kernel is always compiled). Writes
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
from typing import Optional

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

from bench.token_streams import STREAMS  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def tile_split(bands: "tm.TokenBands", block_n: int, block_n_full: int, col: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block of batch row 0, the band kernel's key places of one pass (``col`` 0:
    duplicates, 2: induction) as ``(in masked tiles of block_n, in unmasked tiles of
    block_n_full)``, each ``[n_blocks]``: the kernel's own split (``_band_mass``), on the host."""
    iv = bands.intervals[0].long()
    pad = bands.n_blocks * bands.block_m - iv.shape[0]  # rows past the end: empty intervals [0, 0)
    iv = torch.cat([iv, iv.new_zeros(pad, 4)]).view(bands.n_blocks, bands.block_m, 4)
    lo, hi = iv[..., col], iv[..., col + 1]
    run_lo, run_hi = bands.ranges[0, :, col].long(), bands.ranges[0, :, col + 1].long()
    first_full = ((lo.amax(1) - run_lo).clamp(min=0) + block_n_full - 1) // block_n_full
    n_full = ((hi.amin(1) - run_lo).clamp(min=0) // block_n_full - first_full).clamp(min=0)
    f0 = torch.where(n_full > 0, run_lo + first_full * block_n_full, run_lo)
    f1 = f0 + n_full * block_n_full
    n_masked = (f0 - run_lo) // block_n + ((run_hi - f1).clamp(min=0) + block_n - 1) // block_n
    return n_masked * block_n, n_full * block_n_full


def band_work(tok: torch.Tensor, block_m: int, block_n: int, block_n_full: int, window=None) -> dict:
    """Scores the band kernel computes for one sequence ``tok [N]`` (queries = keys = N), both
    passes, over the causal scores ``N (N + 1) / 2``: in all (``band_fraction``), in tiles inside
    every row's interval (``full_fraction``, the unmasked loop), in the duplicate pass
    (``dup_fraction``), and the matches themselves (``exact_fraction``)."""
    n = tok.numel()
    side = SideInputs.build(batch=1, k_len=n, device=tok.device, token_ids=tok[None])
    bands = tm.token_bands(side, n, block_m, window)
    (dup, dup_full), (ind, ind_full) = (tile_split(bands, block_n, block_n_full, col) for col in (0, 2))
    iv = bands.intervals[0].long()
    scale = block_m / (n * (n + 1) / 2)
    full = float(dup_full.sum() + ind_full.sum())
    return dict(band_fraction=round((float(dup.sum() + ind.sum()) + full) * scale, 5),
                full_fraction=round(full * scale, 5),
                dup_fraction=round(float(dup.sum() + dup_full.sum()) * scale, 5),
                exact_fraction=round(float((iv[:, 1] - iv[:, 0]).sum() + (iv[:, 3] - iv[:, 2]).sum()) * scale
                                     / block_m, 5))


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
    request, side = aot.variant_request(dataclasses.replace(variant, kernel="band") if tokens else variant)
    if not tokens:
        side = dataclasses.replace(side, token_ids=None, prev_token_ids=None)
    launch = ta.launch_arguments(*aot.variant_inputs(variant), request, side, tensors=aot.SpecTensors())
    compiled, log = aot.compile_kernel(aot.kernel_function(launch.bucket), {**launch.args, **launch.flags()}, config, arch)
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    per, hot = hot_loop_per_1k(compiled, bm, bn, config.num_warps)
    return dict(kernel="fused", head_dim=variant.head_dim, stats=variant.stats, token_match="loop" if tokens else "band",
                tile=f"{bm}x{bn} w{config.num_warps} s{config.num_stages}", **aot.resource_usage(compiled, log),
                loop_per_1k=per, hot_loop=hot)


def band_row(variant: aot.CompileVariant, arch: int) -> dict:
    """The band kernel's compile: per 1000 band scores, the unmasked loop (``full_per_1k``) and
    the masked one (``masked_per_1k``), each the mean of the two passes' loops."""
    fn, kwargs = aot.band_launch(variant)
    config = tm.band_config()
    compiled, log = aot.compile_kernel(fn, kwargs, config, arch)
    bm, bn, bnf, warps = kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], kwargs["BLOCK_N_FULL"], config.num_warps
    loops = mma_loops(compiled.asm["sass"])  # per pass: the unmasked loop, then the masked one
    per = [1000 * lp["total"] * warps / (bm * (bn if i % 2 else bnf)) for i, lp in enumerate(loops)]
    return dict(kernel="band", head_dim=variant.head_dim, stats=variant.stats,
                tile=f"{bm}x{bn} (unmasked {bm}x{bnf}) w{warps} s{config.num_stages}",
                **aot.resource_usage(compiled, log), full_per_1k=round((per[0] + per[2]) / 2, 1),
                masked_per_1k=round((per[1] + per[3]) / 2, 1),
                loops=[{k: v for k, v in lp.items() if k not in ("start", "end")} for lp in loops])


def compile_rows(dims, arch: int, fused_from: Optional[list] = None) -> list[dict]:
    """The fused kernel's rows (compiled, or ``fused_from``'s) and the band kernel's, per D."""
    rows = []
    for d in dims:
        for stats in ("none", "all", "modifiers", "full"):
            variant = aot.CompileVariant(d, "bf16", stats)
            for tokens in ((False,) if stats == "none" else (True, False)):
                if fused_from is not None:
                    rows += [r for r in fused_from if r["kernel"] == "fused" and r["head_dim"] == d
                             and r["stats"] == stats and (r["token_match"] == "loop") == tokens]
                    continue
                request, side = aot.variant_request(dataclasses.replace(variant, kernel="band") if tokens else variant)
                if not tokens:
                    side = dataclasses.replace(side, token_ids=None, prev_token_ids=None)
                launch = ta.launch_arguments(*aot.variant_inputs(variant), request, side, tensors=aot.SpecTensors())
                kept = autotune.candidate_configs(launch.bucket, head_dim=d, elt_bytes=2,
                                                  loop_level=autotune.loop_level(launch.flags()))
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
             "per 1000 scores in the cheapest key loop (fused: the unmasked loop; band: per loop, mean of the "
             "two passes). " + (f"Fused rows taken from `{doc['fused_from']}`. " if doc.get("fused_from") else "")
             + (f"`before`: `{doc['before_from']}` (band kernel of that report)." if doc.get("before_from") else ""), "",
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
              "| D | statistics | tile | regs | spill B | smem KB | tensor cores | unmasked loop/1k | masked loop/1k "
              "| before: tile, loop/1k |", "|---:|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r in doc["compile"]:
        if r["kernel"] == "band":
            tc = "wgmma" if r["hgmma"] else ("mma.sync" if r["hmma"] else "none")
            old = next((o for o in doc.get("before_band", []) if o["head_dim"] == r["head_dim"]
                        and o["stats"] == r["stats"]), None)
            lines.append(f"| {r['head_dim']} | {r['stats']} | {r['tile']} | {r['registers']} | {r['spill_store_bytes']} | "
                         f"{r['shared_bytes'] / 1024:.0f} | {tc} | {r['full_per_1k']} | {r['masked_per_1k']} | "
                         f"{old['tile'] + ', ' + str(old['loop_per_1k']) if old else '-'} |")
    lines += ["", f"## Band work / causal scores (BLOCK_M = {doc['block'][0]}, masked key tiles of {doc['block'][1]}, "
              f"unmasked of {doc['block'][2]}; "
              f"mean of {doc['seeds']} streams, [max])", "",
              "Both passes (duplicates + induction), whole key tiles; `unmasked` the part in tiles inside every "
              "row's interval; `dup` the duplicate pass alone; `exact` the matching pairs themselves; `before` "
              "the earlier report's band / causal. Streams: " + "; ".join(f"{k}: {v}" for k, v in doc["streams"].items()), "",
              "| stream | N | band / causal | unmasked | dup | exact | before |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["work"]:
        old = next((o["band_fraction"] for o in doc.get("before_work", []) if (o["stream"], o["n"]) == (r["stream"], r["n"])), None)
        lines.append(f"| {r['stream']} | {r['n']} | {r['band_fraction']:.4f} [{r['band_fraction_max']:.4f}] | "
                     f"{r['full_fraction']:.4f} | {r['dup_fraction']:.4f} | {r['exact_fraction']:.4f} | "
                     f"{f'{old:.4f}' if old is not None else '-'} |")
    lines += ["", "## All statistics end to end, static (main loop without token matching + band loops x band / causal)",
              "", "`(without + unmasked loop/1k x unmasked fraction + masked loop/1k x masked fraction) / none`, per D, "
              "on the kept tile with the cheapest loop without token matching, `none` on the same tile: an estimate "
              "combined from the measured figures above, not a timing. Target (issue 23): <= 1.30.", "",
              "| D | tile | stream | N | in-loop x none | band x none | before |", "|---:|---|---|---:|---:|---:|---:|"]
    fmt = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
    for r in doc["combined"]:
        old = next((o["band_x_none"] for o in doc.get("before_combined", []) if (o["head_dim"], o["stream"], o["n"])
                    == (r["head_dim"], r["stream"], r["n"])), None)
        lines.append(f"| {r['head_dim']} | {r['tile']} | {r['stream']} | {r['n']} | {fmt(r['in_loop_x_none'])} | "
                     f"{fmt(r['band_x_none'])} | {fmt(old)} |")
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
        band = next(r for r in compile_rows_ if r["kernel"] == "band" and r["head_dim"] == d and r["stats"] == "all")
        for w in work:
            cost = band["full_per_1k"] * w["full_fraction"] + band["masked_per_1k"] * (w["band_fraction"] - w["full_fraction"])
            out.append(dict(head_dim=d, tile=tile, stream=w["stream"], n=w["n"],
                            in_loop_x_none=in_loop / none if in_loop and none else None,
                            band_x_none=(best["loop_per_1k"] + cost) / none if none else None))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=aot.ARCHS)
    ap.add_argument("--d", default="64,128")
    ap.add_argument("--lengths", default="1024,4096,16384,32768")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--before", default=None, help="an earlier report's JSON: its band figures beside the new ones")
    ap.add_argument("--fused-from", default=None, help="a report's JSON (same Triton): its fused rows, not recompiled")
    ap.add_argument("--out", default=None, help="output path stem (default bench/results/band-sm<arch>-<date>-triton<v>)")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernels by Python functions")
    for path in (a.before, a.fused_from):
        if path and not os.path.isfile(path):
            ap.error(f"no such report JSON: {path}")
    fused_from = json.loads(Path(a.fused_from).read_text())["compile"] if a.fused_from else None
    before = json.loads(Path(a.before).read_text()) if a.before else {}
    block = tm.BAND_BLOCK
    work = []
    for name, make in STREAMS.items():
        for n in (int(x) for x in a.lengths.split(",")):
            runs = [band_work(make(n, torch.Generator().manual_seed(s)), *block) for s in range(a.seeds)]
            row = {k: round(sum(r[k] for r in runs) / len(runs), 5) for k in runs[0]}
            work.append(dict(stream=name, n=n, **row, band_fraction_max=max(r["band_fraction"] for r in runs)))
            print(json.dumps(work[-1]), file=sys.stderr, flush=True)
    rows = compile_rows([int(x) for x in a.d.split(",")], a.arch, fused_from)
    date = datetime.date.today().isoformat()
    doc = dict(kind="static compile figures and measured band areas (not timings)", arch=a.arch, date=date,
               triton=triton.__version__, torch=torch.__version__, python=platform.python_version(),
               command="python -m bench.band_report " + " ".join(argv if argv is not None else sys.argv[1:]),
               block=block, seeds=a.seeds, streams={k: f.__doc__.split("\n")[0] for k, f in STREAMS.items()},
               work=work, compile=rows, combined=combined(rows, [w for w in work if w["stream"] != "4-tokens"]),
               fused_from=a.fused_from and os.path.basename(a.fused_from), before_from=a.before and os.path.basename(a.before),
               before_band=[r for r in before.get("compile", []) if r["kernel"] == "band"],
               before_work=before.get("work", []), before_combined=before.get("combined", []))
    stem = a.out or os.path.join(RESULTS, f"band-sm{a.arch}-{date}-triton{triton.__version__.rsplit('.', 1)[0]}")
    for path, text in ((stem + ".json", json.dumps(doc, indent=1)), (stem + ".md", markdown(doc))):
        atomic_write(Path(path), lambda tmp, text=text: Path(tmp).write_text(text))  # never a partial file
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

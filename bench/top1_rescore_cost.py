"""The fused kernel's top-1 re-scoring cost, as a share of its key loop (static figures).

The key loop keeps only the tile of each row's running max; the epilogue re-scores each distinct
winning tile of a query block once (``triton_common.top1_in_tiles``), so its cost depends on the
data. This samples the top-1 key of every query (causal, Nq = Nk) under two score models, counts
the distinct winning tiles per query block, and weighs them with a compile report's figures
(warp-instructions per re-scored tile and per key-loop tile):

* ``iid``: i.i.d. continuous scores (no structure): query i's top key is uniform on [0, i];
* ``sink``: i.i.d. N(0, 1) scores plus ``SINK_BONUS`` on key 0 (an attention-sink head): key 0
  wins unless the largest of the other i scores beats it.

    python -m bench.top1_rescore_cost bench/results/compile-sm90-<date>-after-hotloop-triton3.9.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

SINK_BONUS = 6.0
LENGTHS = (1024, 4096, 16384, 32768)


def top_keys(n_keys: int, model: str, generator: torch.Generator) -> torch.Tensor:
    """``[n_keys]`` a sampled top-1 key of each query ``i`` (keys ``0..i``) under ``model``."""
    i = torch.arange(n_keys, dtype=torch.float64)
    if model == "iid":
        return (torch.rand(n_keys, generator=generator, dtype=torch.float64) * (i + 1)).floor().long()
    if model != "sink":
        raise ValueError(f"model must be 'iid' or 'sink', got {model!r}")
    z0 = torch.randn(n_keys, generator=generator, dtype=torch.float64)
    u = torch.rand(n_keys, generator=generator, dtype=torch.float64)
    others_max = torch.distributions.Normal(0.0, 1.0).icdf(u ** (1 / i.clamp(min=1)))  # max of i N(0, 1)
    sink_wins = (i == 0) | (SINK_BONUS + z0 > others_max)
    other = 1 + (torch.rand(n_keys, generator=generator, dtype=torch.float64) * i).floor().long()  # uniform 1..i
    return torch.where(sink_wins, 0, other)


def rescored_tiles(top: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """``[n_blocks]`` distinct winning key tiles per block of ``block_m`` queries."""
    return torch.tensor([len(set((block // block_n).tolist())) for block in top.split(block_m)])


def loop_tiles(n_keys: int, block_m: int, block_n: int) -> torch.Tensor:
    """``[n_blocks]`` key tiles each query block's loop walks (causal, the diagonal included)."""
    ends = torch.clamp(torch.arange(block_m, n_keys + block_m, block_m), max=n_keys)
    return -(-ends // block_n)


def cost_rows(report: dict, lengths=LENGTHS, seed: int = 0) -> list[dict]:
    """Per report row with a re-scoring loop, length and model: tiles re-scored per block and
    their cost as a share of the key loop's."""
    out = []
    for r in report["rows"]:
        if not r.get("top1_rescore_per_tile") or not r.get("hot_loop_per_1k_scores"):
            continue
        bm, bn = r["BLOCK_M"], r["BLOCK_N"]
        per_loop_tile = r["hot_loop_per_1k_scores"] * bm * bn / 1000
        for n in lengths:
            for model in ("sink", "iid"):
                tiles = rescored_tiles(top_keys(n, model, torch.Generator().manual_seed(seed)), bm, bn)
                rescore = tiles.sum().item() * r["top1_rescore_per_tile"]
                share = rescore / (loop_tiles(n, bm, bn).sum().item() * per_loop_tile)
                tile = f"{bm}x{bn} w{r['num_warps']} s{r['num_stages']}"
                out.append(dict(head_dim=r["head_dim"], stats=r["stats"], tile=tile, n_keys=n, model=model,
                                tiles_per_block=round(tiles.float().mean().item(), 2), share_of_loop=round(share, 4)))
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| D | stats | tile | N | scores | tiles re-scored per block | x key loop |",
             "|---:|---|---|---:|---|---:|---:|"]
    lines += [f"| {r['head_dim']} | {r['stats']} | {r['tile']} | {r['n_keys']} | {r['model']} | "
              f"{r['tiles_per_block']} | {100 * r['share_of_loop']:.2f}% |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", help="a compile report's JSON (bench.compile_report) with top1 rows")
    a = ap.parse_args(argv)
    with open(a.report) as f:
        rows = cost_rows(json.load(f))
    if not rows:
        print(f"{a.report}: no row with a top-1 re-scoring loop", file=sys.stderr)
        return 1
    sys.stdout.write(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

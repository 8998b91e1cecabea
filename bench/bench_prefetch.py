"""Prefetch benchmark: wall time per revision of a scan with a simulated slow loader.

    python -m bench.bench_prefetch                 # load 0.4 s, score 0.3 s, 12 revisions
    python -m bench.bench_prefetch --load 1 --score 0.5 --revisions 8

Each revision's "download" sleeps ``--load`` seconds (a network-bound fetch, as
``snapshot_download`` is) and its scoring sleeps ``--score`` seconds, through the real ``Scan``
loop (claims, atomic parquet parts, prefetch threads). Without prefetch a revision costs about
``load + score``; with ``--prefetch 1`` or more about ``max(load, score)``. The peak number of
fetched-but-not-released revisions is recorded too (``--delete-after`` bound: prefetch + 1).
Sleeps stand in for I/O and compute, so the numbers do not depend on the machine's speed. The
simulated downloads share no bandwidth: with ``--prefetch N > 1`` they overlap each other too, so
a revision can cost less than ``load`` (down to about ``max(load / N, score)``); a real link shared
by N downloads would not give that.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from bench.common import environment, write_results
from circuit_stats.scans.catalog import Revision
from circuit_stats.scans.scan import Scan
from circuit_stats.sharding import Shard


def simulated_scan(out: Path, n: int, load_s: float, score_s: float, prefetch: int) -> dict:
    live, peak, lock = set(), [0], threading.Lock()

    def fetch(rev: Revision):
        time.sleep(load_s)
        with lock:
            live.add(rev.revision)
            peak[0] = max(peak[0], len(live))
        return rev.revision

    def release(name):
        with lock:
            live.discard(name)

    def score(rev: Revision, fetched) -> pd.DataFrame:
        time.sleep(score_s)
        return pd.DataFrame({"layer": [0, 0], "head": [0, 1], "induction": [0.1, 0.2], "label": ["unclassified"] * 2})

    catalog = [Revision(f"step{i}", i, i * 1000) for i in range(n)]
    scan = Scan("simulated/model", out, "repeat", catalog=catalog, fetch_fn=fetch, score_fn=score, release_fn=release,
                digest_fn=lambda rev: f"sha-{rev.revision}", prefetch=prefetch, progress=False, shard=Shard())
    t0 = time.perf_counter()
    outcome = scan.run(catalog)
    wall = time.perf_counter() - t0
    assert outcome.ok and len(outcome.scanned) == n
    return {"prefetch": prefetch, "revisions": n, "load_s": load_s, "score_s": score_s, "wall_s": round(wall, 3),
            "per_revision_s": round(wall / n, 3), "sum_s": load_s + score_s, "max_s": max(load_s, score_s),
            "peak_fetched": peak[0]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", type=float, default=0.4, help="seconds per simulated download")
    p.add_argument("--score", type=float, default=0.3, help="seconds per simulated scoring")
    p.add_argument("--revisions", type=int, default=12)
    p.add_argument("--prefetch", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", type=Path, default=None)
    a = p.parse_args(argv)
    rows = []
    for n_ahead in a.prefetch:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(simulated_scan(Path(tmp) / "scan", a.revisions, a.load, a.score, n_ahead))
        r = rows[-1]
        print(f"prefetch {n_ahead}: {r['per_revision_s']:.3f} s/revision (load+score {r['sum_s']:.2f}, "
              f"max {r['max_s']:.2f}), peak fetched {r['peak_fetched']}")
    env = environment("cpu")
    jpath, _ = write_results("prefetch", env, rows, list(rows[0]), out_dir=a.out_dir,
                             extra={"note": "simulated loader and scorer (sleeps, no shared bandwidth); "
                                            "see bench/bench_prefetch.py"})
    print(f"-> {jpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

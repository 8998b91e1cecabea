"""Fake scorers and catalogs for scan tests (no model is loaded)."""

from __future__ import annotations

import threading
import time

import pandas as pd

from circuit_stats.scans.catalog import Revision
from circuit_stats.scans.scan import Scan

CATALOG = [Revision(f"step{s}", s, s * 1000) for s in range(0, 100)]


def fake_scores(jump_at: int, n_layers: int = 2, n_heads: int = 4, delay: float = 0.0):
    """A scorer whose induction fraction jumps from 0 to 3/8 at step ``jump_at``; ``calls`` lists
    the revisions it scored."""
    calls = []
    lock = threading.Lock()

    def score(rev: Revision, fetched=None) -> pd.DataFrame:
        with lock:
            calls.append(rev.revision)
        time.sleep(delay)
        rows = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        df = pd.DataFrame(rows, columns=["layer", "head"])
        df["induction"] = [0.9 if (rev.step >= jump_at and layer == 1 and h < 3) else 0.01 for layer, h in rows]
        df["label"] = ["induction" if v > 0.4 else "unclassified" for v in df["induction"]]
        return df

    return score, calls


def distinct_weights(rev: Revision) -> str:
    return f"sha-{rev.revision}"


def fake_scan(out, score, **kw) -> Scan:
    """A Scan of CATALOG with ``score``: nothing is fetched; every revision has its own weights
    unless ``digest_fn`` says otherwise."""
    kw.setdefault("catalog", CATALOG)
    kw.setdefault("fetch_fn", lambda rev: None)
    kw.setdefault("digest_fn", distinct_weights)
    kw.setdefault("progress", False)
    return Scan("fake/model", out, "repeat", score_fn=score, **kw)

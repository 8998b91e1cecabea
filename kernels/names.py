"""Names of the attention statistics, owned here: ``AttentionStats``' fields, the channels that
``record()`` averages per head, and the per-row scalar ones. Importable without torch or the
application (kernels, models, profiling and reports share it).

Adding a statistic touches this vocabulary, the float64 reference (``naive``), the request
(``request.StatsRequest``: flag and allocation) and each backend's one place (the chunked core's
named step, the fused kernel's loop and epilogue, the split-decode partial column and combine).
"""

from __future__ import annotations

# AttentionStats' fields, in order (kernels/stats.py; a test checks they agree).
STATISTICS = ("lse", "sink", "offsets", "probes", "induction", "duplicate", "entropy", "distance", "local",
              "top1_index", "top1_prob", "span", "learned_sink", "key_mass")
# Statistics per key ([B, Hq, Nk]) rather than per query row.
KEY_STATISTICS = ("key_mass",)
# What record() averages per (layer, head), and the statistic groups a query mask can be given
# for (record(query_mask=...)): every per-row statistic but lse and top1_index.
CHANNELS = tuple(name for name in STATISTICS if name not in ("lse", "top1_index", *KEY_STATISTICS))
# Per-row float statistics averaged as one column each (offsets and probes have one column per
# offset / probe key; sink is a column of its own).
SCALAR_STATISTICS = tuple(name for name in CHANNELS if name not in ("sink", "offsets", "probes"))

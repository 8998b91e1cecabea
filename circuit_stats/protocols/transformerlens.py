"""TransformerLens-compatible head scores: ``detect_head`` with its default ``error_measure="mul"``.

TransformerLens (``transformer_lens/head_detector.py``) scores one text at a time: with the
text's attention pattern ``A [N, N]`` (its ``to_tokens`` puts one BOS in front) and a 0/1
detection pattern ``P``,

    score = sum(A' * P) / sum(A')

where ``A'`` is ``A`` with column 0 zeroed (``exclude_bos``) and/or its diagonal zeroed
(``exclude_current_token``); a list of texts gets the mean of the per-text scores. Its patterns:
previous token ``P[i, i-1]``; duplicate token ``P[i, j] = [t_j == t_i]`` for ``j < i``; induction
``P[i, j] = [t_{j-1} == t_i]`` for ``1 <= j <= i``. These are exactly the fused kernel's
``offset_1``, ``duplicate`` and ``induction`` per query, so without exclusions the score is the
per-text mean over every query (BOS query included) of those statistics. The exclusions remove
column 0 / the diagonal from numerator and denominator:

    denominator = N - eb * sum_i A[i, 0] - ec * sum_i A[i, i] + eb * ec * A[0, 0]   (A[0, 0] = 1)
    induction   -= ec * sum_i A[i, i] [i >= 1, t_{i-1} == t_i]
    duplicate   -= eb * sum_i A[i, 0] [i >= 1, t_i == t_0]
    previous    -= eb * A[1, 0]

The masked sums come from a second copy of each row in the same forward, whose query masks
select those queries (``sink`` -> ``A[i, 0]``, ``offset_0`` -> ``A[i, i]``, probe key 0 at query 1
-> ``A[1, 0]``). ``error_measure="abs"`` is not reproduced.

Note: TransformerLens' ``detect_head(model, list_of_texts, name, exclude_bos=...)`` drops
``exclude_bos``, ``exclude_current_token`` and ``error_measure`` when it recurses over the list
(its per-text calls use the defaults; read at TransformerLens commit 030a561); here they apply to every text, which equals calling
``detect_head`` on each text and averaging.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from ..models import offset_column, probe_column
from .engine import Batch, run_batches
from .texts import pad_right
from .uncertainty import mean_se, se_column


def _batches(seqs: Sequence[Sequence[int]], batch_size: int, exclusions: bool) -> Iterator[tuple[Batch, dict]]:
    """Right-padded batches; with ``exclusions`` each row is followed (as a second block of
    rows) by a copy whose query masks select the correction terms. Also yields the per-row
    query counts of each channel."""
    for s in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[s : s + batch_size])
        valid = mask.bool()
        counts = {"main": valid.sum(1)}
        if not exclusions:
            yield Batch(ids, mask), counts
            continue
        pos = torch.arange(ids.shape[1])
        none = torch.zeros_like(valid)
        first_token_again = (ids == ids[:, :1]) & (pos >= 1) & valid  # t_i == t_0, i >= 1
        repeats_previous = none.clone()
        repeats_previous[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & valid[:, 1:]  # t_i == t_{i-1}
        query_1 = none.clone()
        query_1[:, 1] = True
        two = lambda main, corr: torch.cat([main, corr])  # noqa: E731
        query_mask = {"sink": two(valid, first_token_again), "offsets": two(valid, repeats_previous),
                      "probes": two(none, query_1), "induction": two(valid, none), "duplicate": two(valid, none),
                      "entropy": two(valid, none)}
        counts.update(first_token_again=first_token_again.sum(1), repeats_previous=repeats_previous.sum(1))
        probe_keys = torch.zeros(2 * len(ids), 1, dtype=torch.long)  # key 0
        yield Batch(two(ids, ids), two(mask, mask), query_mask, probe_keys), counts


def transformerlens_scores(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    *,
    batch_size: int,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    entropy: bool = False,
    device: Optional[torch.device] = None,
    desc: str = "transformerlens",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``detect_head`` scores, averaged over texts, for token-id sequences given as the model
    sees them (BOS already in front, as TransformerLens' ``to_tokens`` puts it).

    Returns ``{"previous_token", "duplicate", "induction", "sink", ["entropy"]: [layers, heads]}``
    (float64): the three TransformerLens scores, plus the per-text mean attention on key 0 and
    (``entropy``) the per-text mean row entropy in nats, both over every query; each averaged
    over texts, with its standard error over texts under ``<name>_se``.
    """
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every sequence needs >= 2 tokens (TransformerLens refuses shorter ones)")
    eb, ec = bool(exclude_bos), bool(exclude_current_token)
    exclusions = eb or ec
    blocks: list[dict] = []

    def batches():
        for batch, counts in _batches(seqs, batch_size, exclusions):
            blocks.append(counts)
            yield batch

    res = run_batches(model, batches(), total=-(-len(seqs) // batch_size), offsets=(0, 1) if exclusions else (1,),
                      token_match=True, entropy=entropy, per_sample=True, device=device, desc=desc,
                      progress=progress)
    per = {k: v.double() for k, v in res.per_sample.items()}  # [rows, L, H]
    main_rows, corr_rows, row = [], [], 0
    for counts in blocks:
        b = len(counts["main"])
        main_rows += range(row, row + b)
        if exclusions:
            corr_rows += range(row + b, row + 2 * b)
        row += (2 if exclusions else 1) * b
    main = {k: v[main_rows] for k, v in per.items()}
    n = torch.cat([c["main"] for c in blocks]).double()[:, None, None]  # [texts, 1, 1]

    def total(name):  # sum over a text's queries, from its per-text mean
        return main[name] * n

    num = {"previous_token": total(offset_column(1)), "duplicate": total("duplicate"), "induction": total("induction")}
    denom = n.expand_as(num["induction"]).clone()
    if exclusions:
        corr = {k: v[corr_rows] for k, v in per.items()}

        def masked_total(name, key):  # sum over the selected queries (none selected: 0, not NaN)
            cnt = torch.cat([c[key] for c in blocks]).double()[:, None, None]
            return torch.nan_to_num(corr[name] * cnt, nan=0.0)

        if eb:
            denom -= total("sink")
            num["duplicate"] = num["duplicate"] - masked_total("sink", "first_token_again")
            num["previous_token"] = num["previous_token"] - corr[probe_column(0)]
        if ec:
            denom -= total(offset_column(0))
            num["induction"] = num["induction"] - masked_total(offset_column(0), "repeats_previous")
        if eb and ec:
            denom += 1.0  # A[0, 0] was removed twice
    per_text = {k: v / denom for k, v in num.items()}
    per_text["sink"] = main["sink"]
    if entropy:
        per_text["entropy"] = main["entropy"]
    out = {}
    for name, values in per_text.items():
        out[name], out[se_column(name)] = mean_se(values)
    return out

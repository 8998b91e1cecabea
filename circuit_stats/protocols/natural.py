"""The "natural" protocol: head scores on natural text of any length.

``convention="circuit_stats"`` (default): token-match ``induction`` and ``duplicate`` mass
(TransformerLens' detection patterns), ``previous_token`` (attention on key i-1), ``sink`` (on
the first key) and ``entropy`` (nats), pooled over every query of every text, so a long text
weighs in proportion to its length. Texts are tokenized as the tokenizer does by default
(special tokens included); ``bos_token_id`` puts one more token in front.

``convention="transformerlens"``: TransformerLens' ``detect_head`` (``error_measure="mul"``):
each text tokenized without special tokens behind one BOS (``bos_token_id``, else the tokenizer's,
else the model config's),
scores per text over every query (``exclude_bos`` / ``exclude_current_token`` as in
TransformerLens), then the mean over texts; see ``transformerlens.py``.

Memory is O(N) per layer either way, so 8k-token and longer texts run where eager attention
cannot.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from ..labels import DUPLICATE_TOKEN, FIRST_TOKEN, INDUCTION, PREVIOUS_TOKEN, label_heads
from ..models import offset_column
from .engine import run_batches
from .frames import flat, head_frame
from .spec import Protocol, require_choice, require_int, require_thresholds
from .texts import check_no_double_bos, config_bos_id, text_batches, tokenize_texts, tokenizer_bos_id
from .transformerlens import transformerlens_scores
from .uncertainty import label_margins, pooled_se, se_column

CONVENTIONS = ("circuit_stats", "transformerlens")
DEFAULTS = dict(max_tokens=None, convention="circuit_stats", exclude_bos=False, exclude_current_token=False,
                thresholds={"induction": 0.3, "duplicate": 0.3, "previous_token": 0.4, "sink": 0.5})
# score column -> head class; the thresholds are keyed by score column
NAMES = {"induction": INDUCTION, "previous_token": PREVIOUS_TOKEN, "duplicate": DUPLICATE_TOKEN,
         "sink": FIRST_TOKEN}
SCORES = ("induction", "duplicate", "previous_token", "sink", "entropy")


def validate(o: dict) -> None:
    require_int(o, "max_tokens", 2, optional=True)
    require_choice(o, "convention", CONVENTIONS)
    require_thresholds(o)
    if o["convention"] != "transformerlens" and (o["exclude_bos"] or o["exclude_current_token"]):
        raise ValueError("exclude_bos / exclude_current_token are TransformerLens options: "
                         "use them with convention='transformerlens'")


def score(model, *, tokenizer=None, texts=None, batch_size: int = 1, device=None,
          bos_token_id: Optional[int] = None, progress: bool = True, **options) -> pd.DataFrame:
    """Per-(layer, head) ``induction``, ``duplicate``, ``previous_token``, ``sink``, ``entropy``,
    their standard errors over texts (``<score>_se``), ``is_*``, ``label``, ``label_margin`` and
    ``is_borderline``; ``df.attrs["settings"]`` says how texts were tokenized and averaged."""
    o = PROTOCOL.check_options(options)
    tl = o["convention"] == "transformerlens"
    enc = tokenize_texts(texts, tokenizer, model, add_special_tokens=False if tl else None)
    seqs = enc.seqs
    if o["max_tokens"]:
        seqs = [s[: o["max_tokens"]] for s in seqs]
    if tl:
        bos = next((b for b in (bos_token_id, tokenizer_bos_id(tokenizer), config_bos_id(model)) if b is not None), None)
        if bos is None:
            raise ValueError("convention='transformerlens' puts a BOS in front of every text, as TransformerLens' "
                             "to_tokens does: pass bos_token_id= (neither the tokenizer nor the model config has "
                             "a bos_token_id)")
        if any(s[0] == bos for s in seqs):
            raise ValueError(f"a text already starts with the BOS id {bos}; give texts without it "
                             "(convention='transformerlens' adds one)")
        seqs = [[int(bos)] + s for s in seqs]
        m = transformerlens_scores(model, seqs, batch_size=batch_size, exclude_bos=o["exclude_bos"],
                                   exclude_current_token=o["exclude_current_token"], entropy=True, device=device,
                                   desc="natural", progress=progress)
        averaging = "per text over every query (BOS query included), then the mean over texts"
    else:
        check_no_double_bos(enc, bos_token_id)
        bos = bos_token_id
        res = run_batches(model, text_batches(seqs, batch_size, bos), total=-(-len(seqs) // batch_size),
                          offsets=(1,), token_match=True, entropy=True, per_sample=True, device=device,
                          desc="natural", progress=progress)
        statistic = dict(zip(SCORES, SCORES), previous_token=offset_column(1))
        m = {col: res.means[stat] for col, stat in statistic.items()}
        m.update({se_column(col): pooled_se(res.per_sample, res.counts, stat) for col, stat in statistic.items()})
        averaging = "pooled over every query of every text"
    df = head_frame(*m["sink"].shape)
    for col in SCORES:
        df[col] = flat(m[col])
    for col in SCORES:
        df[se_column(col)] = flat(m[se_column(col)])
    df = label_margins(label_heads(df, o["thresholds"], NAMES), o["thresholds"], NAMES)
    n_tokens = sum(map(len, seqs)) - (len(seqs) if tl else 0)  # text tokens, without the added BOS
    df.attrs.update(settings=dict(o, n_texts=len(seqs), n_tokens=n_tokens, bos_token_id=bos, averaging=averaging,
                                  standard_error="over texts",
                                  tokenizer=enc.tokenizer, special_tokens=enc.special_tokens))
    return df


PROTOCOL = Protocol(name="natural", score=score, defaults=DEFAULTS, takes_texts=True,
                    induction_score="induction", induction_flag="is_induction", validate=validate,
                    first_token_score="sink")

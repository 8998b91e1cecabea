"""Wu et al. 2024's retrieval scoring (``retrieval`` with ``convention="wu2024"``), as their
``retrieval_head_detection.py`` computes it (nightdessert/Retrieval_Head):

* a step scores a hit for a head when the top-1 key of the step's query lies in the **answer
  span** (their ``real_needle``'s tokens in the prompt; here the needle after its cue prefix) and
  holds the generated token; each hit adds ``1 / len(answer span)``;
* decoding runs greedily for up to 50 tokens and stops after a newline token (the step that
  generates it still counts);
* a trial succeeds when ROUGE-1 recall (``rouge_score``, Porter stemmer) of the answer text in
  the decoded response (``skip_special_tokens``, stripped) exceeds 50 %; a head's score is the
  mean over successful trials.
"""

from __future__ import annotations

from typing import Optional, Sequence

MAX_NEW_TOKENS = 50  # their decode_len


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall of ``reference`` in ``prediction`` (0-1), with the Porter stemmer, as their
    ``scorer.score(real_needle, response)['rouge1'].recall``."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # an optional extra
        raise ImportError("convention='wu2024' scores success with ROUGE-1 as Wu et al. do: "
                          "pip install 'circuit-stats[retrieval]' (the rouge-score package)") from e
    return float(rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(reference, prediction)["rouge1"].recall)


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Token ids -> text with the tokenizer's ``decode`` (special tokens skipped), or UTF-8 for the
    byte tokenizer (anything callable without ``decode``)."""
    if hasattr(tokenizer, "decode"):
        return tokenizer.decode(list(ids), skip_special_tokens=True)
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def newline_token(encode) -> Optional[int]:
    """The id that stops decoding: ``encode("\\n")`` when it is one token (their check is Llama's
    ``<0x0A>``), else None (decoding then runs all 50 tokens)."""
    ids = encode("\n")
    return int(ids[0]) if len(ids) == 1 else None


def first_stop(generated: Sequence[int], stop: Optional[int]) -> int:
    """Number of generated tokens up to and including the first ``stop`` token (all of them without one)."""
    for i, t in enumerate(generated):
        if stop is not None and int(t) == stop:
            return i + 1
    return len(generated)

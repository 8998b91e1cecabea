"""Independent eager implementations of the peers' definitions, from HF eager attention
probabilities (``output_attentions=True``), one text at a time and in float64:

- TransformerLens ``detect_head`` with ``error_measure="mul"`` (its default): detection
  patterns built from the tokens, ``sum(A' * P) / sum(A')`` per head, the mean over texts.
- Gu et al.'s sink metric: ``alpha0`` per prompt (mean over every query of the attention on
  position 0), sink rate = share of (layer, head) with ``alpha0 > eps`` per prompt, averaged.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def eager_probs(eager, ids: torch.Tensor, mask=None) -> list[torch.Tensor]:
    """Per layer, ``[B, H, N, N]`` float64 attention probabilities of a batch."""
    return [a.double() for a in eager(ids, attention_mask=mask, output_attentions=True).attentions]


@torch.no_grad()
def eager_attention(eager, ids: list[int]) -> torch.Tensor:
    """``[layers, heads, N, N]`` float64 attention probabilities of one unpadded sequence."""
    out = eager(torch.tensor([ids]), output_attentions=True)
    return torch.stack([a[0].double() for a in out.attentions])


def detection_patterns(ids: list[int]) -> dict[str, torch.Tensor]:
    """TransformerLens' three 0/1 detection patterns ``[N, N]`` for the tokens ``ids``."""
    t = torch.tensor(ids)
    n = len(ids)
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    same = t[:, None] == t[None, :]
    induction = torch.zeros(n, n, dtype=torch.bool)  # key j (1 <= j <= i) follows a copy of token i
    induction[:, 1:] = same[:, :-1] & (k[:, 1:] <= q)
    return {"previous_token": (k == q - 1).double(), "duplicate": (same & (k < q)).double(),
            "induction": induction.double()}


def detect_head_mul(attn: torch.Tensor, pattern: torch.Tensor, exclude_bos: bool,
                    exclude_current_token: bool) -> torch.Tensor:
    """``[layers, heads]`` scores for ``attn [layers, heads, N, N]``."""
    a = attn.clone()
    if exclude_bos:
        a[..., :, 0] = 0
    if exclude_current_token:
        a.diagonal(dim1=-2, dim2=-1).zero_()
    return (a * pattern).sum((-2, -1)) / a.sum((-2, -1))


def transformerlens_reference(eager, texts: list[list[int]], exclude_bos=False, exclude_current_token=False):
    """``{score: [layers, heads]}``: per-text detect_head scores averaged over ``texts`` (each
    already behind its BOS)."""
    per_text = {name: [] for name in ("previous_token", "duplicate", "induction")}
    for ids in texts:
        attn = eager_attention(eager, ids)
        for name, pattern in detection_patterns(ids).items():
            per_text[name].append(detect_head_mul(attn, pattern, exclude_bos, exclude_current_token))
    return {name: torch.stack(v).mean(0) for name, v in per_text.items()}


def gu_reference(eager, prompts: list[list[int]]) -> torch.Tensor:
    """``[prompts, layers, heads]``: alpha0 of every prompt."""
    return torch.stack([eager_attention(eager, p)[..., :, 0].mean(-1) for p in prompts])

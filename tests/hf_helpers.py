"""Shared helpers for the Hugging Face tests: tiny models and eager-attention oracles."""

from __future__ import annotations

import torch
from circuit_stats.kernels import stats_from_probabilities
from circuit_stats.models import offset_column, tiny_model

FAMILIES = ["pythia", "olmo", "olmoe", "llama-gqa"]


def model_pair(family: str, seed: int = 1, dtype=torch.float32, **kw):
    """The same random weights under circuit_stats and under eager attention. A large
    initializer_range makes attention peaky, so that statistics differ between heads."""
    kw.setdefault("initializer_range", 0.3)
    ours = tiny_model(family, attn_implementation="circuit_stats", seed=seed, dtype=dtype, **kw)
    eager = tiny_model(family, attn_implementation="eager", seed=seed, dtype=dtype, **kw)
    eager.load_state_dict(ours.state_dict())
    return ours, eager


def random_batch(B=3, N=29, vocab=(3, 24), padding=None, seed=0):
    """Token ids from a small vocabulary (so that token matches are frequent) and a mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(*vocab, (B, N), generator=g)
    ids[:, N // 2 : N // 2 + 6] = ids[:, 2:8]  # a repeated stretch: real induction targets
    mask = torch.ones(B, N, dtype=torch.long)
    if padding:
        for b in range(B):
            n_pad = (3 * b + 2) % (N // 2)
            if padding == "left":
                mask[b, :n_pad] = 0
            else:
                mask[b, N - n_pad :] = 0
    return ids, mask


def positions_from_first_real_token(mask):
    """Position of every token counted from its row's first real token (-1: padding), by a plain loop."""
    pos = torch.full(mask.shape, -1, dtype=torch.long)
    for b in range(mask.shape[0]):
        n = 0
        for i in range(mask.shape[1]):
            if mask[b, i]:
                pos[b, i] = n
                n += 1
    return pos


@torch.no_grad()
def eager_means(eager, ids, mask, offsets=(), token_match=False, entropy=False, query_mask=None,
                learned_sink=False):
    """Per-(layer, head) means of every statistic, computed from HF eager attention
    probabilities (output_attentions=True) with the float64 reference definitions.

    ``learned_sink``: the model has learned sinks (gpt-oss ``s_aux``), whose mass eager attention
    drops from the probabilities it returns: it is ``1 - sum_j p_ij``, and it counts as one more
    outcome in the entropy."""
    out = eager(ids, attention_mask=mask, output_attentions=True)
    kpm = mask.bool()
    w = (kpm if query_mask is None else query_mask).double()
    res: dict[str, list] = {}
    for probs in out.attentions:
        st = stats_from_probabilities(probs.double(), key_padding_mask=kpm, offsets=offsets,
                                      token_ids=ids if token_match else None, entropy=entropy)
        cols = {"sink": st.sink}
        for i, o in enumerate(offsets):
            cols[offset_column(o)] = st.offsets[..., i]
        if token_match:
            cols["induction"], cols["duplicate"] = st.induction, st.duplicate
        if entropy:
            cols["entropy"] = st.entropy
        if learned_sink:
            sink_mass = (1 - probs.double().sum(-1)).clamp(min=0)
            cols["learned_sink"] = sink_mass
            if entropy:
                cols["entropy"] = st.entropy - torch.xlogy(sink_mass, sink_mass)
        for name, val in cols.items():
            res.setdefault(name, []).append(torch.einsum("bhq,bq->h", val, w) / w.sum())
    return {k: torch.stack(v).float() for k, v in res.items()}

"""Independent eager implementations of the peers' definitions, from HF eager attention
probabilities (``output_attentions=True``), one text at a time and in float64:

- TransformerLens ``detect_head`` with ``error_measure="mul"`` (its default): detection
  patterns built from the tokens, ``sum(A' * P) / sum(A')`` per head, the mean over texts.
- Gu et al.'s sink metric: ``alpha0`` per prompt (mean over every query of the attention on
  position 0), sink rate = share of (layer, head) with ``alpha0 > eps`` per prompt, averaged.
- A transcription of Gu et al.'s own code (sail-sg/Attention-Sink, ``eval_sink_open_source.py``
  at commit 663f658): ``measure_attention_sink`` and ``compute_attention_sink``, unchanged but for
  the device (CPU) and ``importance_scores``, the part of ``compute_attention_sink`` that gives
  alpha_j per (sample, layer, head), split out so that alpha0 can be compared as well.
"""

from __future__ import annotations

import numpy as np
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


# ---------------------------------------------------------------- Wu et al. 2024, retrieval heads
# A transcription of nightdessert/Retrieval_Head, retrieval_head_detection.py (LLMNeedleHaystackTester:
# find_needle_idx, decode, retrieval_calculate, and the success test of evaluate_and_log), with HF eager
# attention in place of their patched flash attention, one trial at a time.

def wu_find_needle_idx(prompt_ids: torch.Tensor, needle_ids: list[int]) -> tuple[int, int]:
    """Their ``find_needle_idx``: the first span whose token set overlaps the needle's by > 90%."""
    span_len = len(needle_ids)
    for i in range(len(prompt_ids)):
        span_ids = set(prompt_ids[i : i + span_len].tolist())
        if float(len(span_ids.intersection(set(needle_ids)))) / len(set(needle_ids)) > 0.9:
            return i, i + span_len
    return -1, -1


@torch.no_grad()
def wu_trial(eager, prompt_ids: torch.Tensor, real_needle_ids: list[int], decode_text, newline_id, rouge_recall,
             decode_len: int = 50):
    """``(retrieval score [layers, heads], success)`` of one trial, as their code computes it."""
    needle_start, needle_end = wu_find_needle_idx(prompt_ids, real_needle_ids)
    q_outputs = eager(input_ids=prompt_ids[None, :-1], use_cache=True)
    past_kv = q_outputs.past_key_values
    inp = prompt_ids[-1]
    n_layers, n_heads = eager.config.num_hidden_layers, eager.config.num_attention_heads
    score = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    output = []
    for _ in range(decode_len):
        inp = inp.view(1, 1)
        outputs = eager(input_ids=inp, past_key_values=past_kv, use_cache=True, output_attentions=True)
        past_kv = outputs.past_key_values
        inp = outputs.logits[0, -1].argmax()
        output.append(inp.item())
        for layer in range(n_layers):  # retrieval_calculate, topk=1
            for head in range(n_heads):
                values, idx = outputs.attentions[layer][0][head][-1].topk(1)
                for v, i in zip(values, idx):
                    if needle_start <= i < needle_end and inp.item() == prompt_ids[i].item():
                        score[layer, head] += 1 / (needle_end - needle_start)
                        break
        if inp.item() == newline_id:
            break
    response = decode_text(output).strip()
    return score, rouge_recall(decode_text(real_needle_ids), response) * 100 > 50


def measure_attention_sink(model, tokenizer, prompts, score_path, token_length=50, device=torch.device("cpu")):
    """Gu et al.: each prompt tokenized with the tokenizer's defaults, cut to ``token_length``
    tokens, one eager ``generate`` step with ``output_attentions=True``; the prefill's attention
    maps of every layer saved to ``score_path`` as ``(samples, layers, heads, T, T)``."""
    num_layers = model.config.num_hidden_layers
    attention_scores_all_sample = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        for key in inputs.keys():
            assert inputs[key].shape[1] >= token_length
            inputs[key] = inputs[key][:, :token_length]
        outputs = model.generate(**inputs, output_attentions=True, return_dict_in_generate=True, max_new_tokens=1)
        attentions = outputs["attentions"]
        assert len(attentions) == 1
        attention_scores_all_layer = []
        for l in range(num_layers):
            attentions_layer = attentions[0][l]
            attention_scores_all_layer.append(attentions_layer)
        attention_scores_all_layer = torch.cat(attention_scores_all_layer, dim=0)
        attention_scores_all_sample.append(attention_scores_all_layer.unsqueeze(dim=0))
    attention_scores_all_sample = torch.cat(attention_scores_all_sample, dim=0)
    np.save(score_path, attention_scores_all_sample.cpu().numpy())


def importance_scores(score_path):
    """alpha_j = sum_i A[i, j] / (T - j): ``(samples, layers, heads, T)``."""
    attention_scores = np.load(score_path)
    num_samples, num_layers, num_heads, num_tokens1, num_tokens2 = attention_scores.shape
    assert num_tokens1 == num_tokens2
    attention_scores = torch.from_numpy(attention_scores)
    ratios = torch.arange(num_tokens1, 0, -1)[None, None, None, :].expand(
        num_samples, num_layers, num_heads, num_tokens1, num_tokens2).to(attention_scores)
    return (attention_scores / ratios).sum(dim=-2)


def compute_attention_sink(score_path, epsilon):
    """Per key position j, the percentage of (sample, layer, head) with alpha_j > epsilon; the
    sink rate is entry 0."""
    metric1 = (importance_scores(score_path) > epsilon).to(torch.float).mean(dim=(0, 1, 2))
    return metric1 * 100

"""Per-family facts and tiny random-weight models that keep each family's attention quirks.

The tiny configs are what tests and the demo use (no weights can be downloaded there). The real
models' facts are in ``docs/science.md``. Every config has ``layers`` decoder layers (default 2),
``heads`` query heads of dimension ``hidden // heads`` (16 by default) and a 128-token vocabulary.
Families with sliding-window layers get a window of ``WINDOW`` tokens, shorter than the test
sequences, and (where the real model alternates) one sliding and one full layer, so that each
layer's own pattern is exercised.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig

# Sliding window of the tiny models' local layers: shorter than every test sequence.
WINDOW = 6


def _config_class(name: str):
    """The transformers config class ``name``, or None when the running release lacks it."""
    return getattr(transformers, name, None)


def _alternating(layers: int, first: str = "sliding_attention") -> list[str]:
    """``layers`` layer types alternating local and global, starting with ``first``."""
    other = "full_attention" if first == "sliding_attention" else "sliding_attention"
    return [first if i % 2 == 0 else other for i in range(layers)]


def tiny_pythia_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw):
    """GPT-NeoX with Pythia's quirks: partial rotary (25%) and parallel residual."""
    kw.setdefault("intermediate_size", 4 * hidden)
    return transformers.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, rotary_pct=0.25, use_parallel_residual=True,
                                      max_position_embeddings=2048, bos_token_id=0, eos_token_id=0,
                                      tie_word_embeddings=False, **kw)


def tiny_olmo_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4,
                     clip_qkv: float = 2.0, **kw):
    """OLMo: non-parametric LayerNorm (built in) and clip_qkv. The clip is set low (the real model
    uses 8.0) so that it actually clips random tiny-model activations (std ~2.4 here)."""
    return transformers.OlmoConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=heads,
                                   intermediate_size=4 * hidden, clip_qkv=clip_qkv, max_position_embeddings=4096,
                                   pad_token_id=1, eos_token_id=2, bos_token_id=None, **kw)


def tiny_olmoe_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw):
    """OLMoE: RMSNorm on q and k over the full width (built in) and a few top-k experts."""
    return transformers.OlmoeConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=heads, num_key_value_heads=heads,
                                    intermediate_size=2 * hidden, num_experts=4, num_experts_per_tok=2,
                                    max_position_embeddings=4096, pad_token_id=1, eos_token_id=2,
                                    bos_token_id=None, **kw)


def tiny_llama_gqa_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw):
    """Any other model dispatching through the attention interface; here with GQA (2 kv heads)."""
    return transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                                    intermediate_size=4 * hidden, max_position_embeddings=2048, pad_token_id=0,
                                    bos_token_id=None, eos_token_id=None, **kw)


def _family(config_class: str, doc: str, build: Callable[[int, int, int, int, dict], dict]):
    """A tiny-config factory for ``config_class`` (looked up in the running transformers)."""

    def make(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw) -> PretrainedConfig:
        cls = _config_class(config_class)
        if cls is None:
            raise ImportError(f"transformers {transformers.__version__} has no {config_class}")
        args = build(vocab_size, hidden, layers, heads, kw)
        args.update(kw)
        return cls(**args)

    make.__doc__ = doc
    make.config_class = config_class
    return make


def _common(vocab, hidden, layers, heads, kv_heads=None, **extra) -> dict:
    args = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=2 * hidden, max_position_embeddings=256, pad_token_id=1, eos_token_id=2,
                bos_token_id=None)
    if kv_heads is not None:
        args["num_key_value_heads"] = kv_heads
    args.update(extra)
    return args


def _gqa(heads: int) -> int:
    return max(1, heads // 2)


TINY_CONFIGS: dict[str, Callable[..., PretrainedConfig]] = {
    "pythia": tiny_pythia_config,
    "olmo": tiny_olmo_config,
    "olmo2": _family("Olmo2Config", "OLMo 2: RMSNorm on q and k over the full width, norms after the sublayers.",
                     lambda v, h, n, a, kw: _common(v, h, n, a, a)),
    "olmo3": _family("Olmo3Config", "OLMo 3: OLMo 2 plus sliding-window layers alternating with full ones.",
                     lambda v, h, n, a, kw: _common(v, h, n, a, a, sliding_window=WINDOW,
                                                    layer_types=_alternating(n))),
    "olmoe": tiny_olmoe_config,
    "llama-gqa": tiny_llama_gqa_config,
    "mistral": _family("MistralConfig", "Mistral: GQA and a sliding window on every layer.",
                       lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), sliding_window=WINDOW)),
    "mixtral": _family("MixtralConfig", "Mixtral: GQA and top-2 experts (the released models have no window).",
                       lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), num_local_experts=4,
                                                      num_experts_per_tok=2, sliding_window=None)),
    "qwen2": _family("Qwen2Config", "Qwen2: GQA and biases on q, k and v.",
                     lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a))),
    "qwen2-window": _family("Qwen2Config", "Qwen2 with use_sliding_window: windowed layers below max_window_layers.",
                            lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), use_sliding_window=True,
                                                           sliding_window=WINDOW, max_window_layers=1)),
    "qwen3": _family("Qwen3Config", "Qwen3: GQA and per-head RMSNorm on q and k.",
                     lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), head_dim=h // a)),
    "qwen2-moe": _family("Qwen2MoeConfig", "Qwen2-MoE: qkv biases, top-k experts and a shared expert.",
                         lambda v, h, n, a, kw: _common(v, h, n, a, a, num_experts=4, num_experts_per_tok=2,
                                                        moe_intermediate_size=h, shared_expert_intermediate_size=h)),
    "qwen2-moe-window": _family("Qwen2MoeConfig", "Qwen2-MoE with use_sliding_window: transformers builds a "
                                "sliding-window mask for layer 0 but does not pass sliding_window to attention.",
                                lambda v, h, n, a, kw: _common(v, h, n, a, a, num_experts=4, num_experts_per_tok=2,
                                                               moe_intermediate_size=h,
                                                               shared_expert_intermediate_size=h,
                                                               use_sliding_window=True, sliding_window=WINDOW,
                                                               max_window_layers=1)),
    "gemma": _family("GemmaConfig", "Gemma: multi-query attention, scaled embeddings, (1 + w) RMSNorm.",
                     lambda v, h, n, a, kw: _common(v, h, n, a, 1, head_dim=h // a)),
    "gemma2": _family("Gemma2Config", "Gemma 2: alternating local/global layers, attention-logit and final "
                      "softcapping, query_pre_attn_scalar scaling. The attention softcap is set low (the real "
                      "model uses 50) so that it bends the tiny model's scores.",
                      lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), head_dim=h // a, sliding_window=WINDOW,
                                                     layer_types=_alternating(n), attn_logit_softcapping=3.0,
                                                     final_logit_softcapping=30.0, query_pre_attn_scalar=32)),
    "gemma3": _family("Gemma3TextConfig", "Gemma 3 (text): per-head qk-norm, local/global layers with their own "
                      "rotary bases, query_pre_attn_scalar scaling.",
                      lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), head_dim=h // a, sliding_window=WINDOW,
                                                     layer_types=_alternating(n), query_pre_attn_scalar=32)),
    "phi": _family("PhiConfig", "Phi (1.5/2): partial rotary (50%), parallel attention and MLP, biases.",
                   lambda v, h, n, a, kw: _common(v, h, n, a, a, partial_rotary_factor=0.5)),
    "phi3": _family("Phi3Config", "Phi-3: fused qkv projection, GQA and a sliding window.",
                    lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), sliding_window=WINDOW)),
    "stablelm": _family("StableLmConfig", "StableLM 2: partial rotary (25%), per-head q/k LayerNorm (12B), "
                        "parallel residual.",
                        lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), partial_rotary_factor=0.25,
                                                       qk_layernorm=True, use_parallel_residual=True)),
    "starcoder2": _family("Starcoder2Config", "StarCoder2: GQA, biases and a sliding window on every layer.",
                          lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), sliding_window=WINDOW)),
    "gptj": _family("GPTJConfig", "GPT-J: interleaved partial rotary (rotary_dim of 16) and parallel residual.",
                    lambda v, h, n, a, kw: dict(vocab_size=v, n_embd=h, n_layer=n, n_head=a, rotary_dim=(h // a) // 2,
                                                n_positions=256, bos_token_id=0, eos_token_id=2)),
    "opt": _family("OPTConfig", "OPT: learned positions offset by 2, pre-LayerNorm, biases.",
                   lambda v, h, n, a, kw: dict(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                               ffn_dim=2 * h, word_embed_proj_dim=h, max_position_embeddings=256,
                                               pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    "gpt2": _family("GPT2Config", "GPT-2: fused c_attn (Conv1D), learned positions.",
                    lambda v, h, n, a, kw: dict(vocab_size=v, n_embd=h, n_layer=n, n_head=a, n_positions=256,
                                                bos_token_id=0, eos_token_id=0)),
    "granite": _family("GraniteConfig", "Granite: GQA, attention_multiplier as the score scale, embedding, "
                       "residual and logits multipliers.",
                       lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), attention_multiplier=0.1,
                                                      embedding_multiplier=2.0, residual_multiplier=0.5,
                                                      logits_scaling=2.0)),
    "gpt-oss": _family("GptOssConfig", "gpt-oss: learned attention sinks (s_aux), alternating sliding/full "
                       "layers, GQA, attention biases, top-k experts.",
                       lambda v, h, n, a, kw: _common(v, h, n, a, _gqa(a), head_dim=h // a, sliding_window=WINDOW,
                                                      layer_types=_alternating(n), num_local_experts=4,
                                                      num_experts_per_tok=2, intermediate_size=h)),
    "falcon": _family("FalconConfig", "Falcon (7B/40B architecture): rotary, multi-query, parallel attention. "
                      "Its attention does not go through transformers' AttentionInterface (see refusal_reason).",
                      lambda v, h, n, a, kw: dict(vocab_size=v, hidden_size=h, num_hidden_layers=n,
                                                  num_attention_heads=a, new_decoder_architecture=False,
                                                  multi_query=True, alibi=False, parallel_attn=True,
                                                  bos_token_id=0, eos_token_id=2)),
}


def attention_interface_refusal(model: torch.nn.Module) -> Optional[str]:
    """Why ``model`` cannot run ``attn_implementation="circuit_stats"`` with the installed
    transformers, or None. A model whose attention classes do not dispatch through
    ``AttentionInterface`` (their modeling module never looks up ``ALL_ATTENTION_FUNCTIONS``:
    Falcon; GPT-J on transformers 5.2, not on 5.24) cannot take any custom attention."""
    for module in model.modules():
        if "Attention" not in type(module).__name__:
            continue
        source = sys.modules.get(type(module).__module__)
        if source is not None and not hasattr(source, "ALL_ATTENTION_FUNCTIONS"):
            break
    else:
        return None
    return (
        f"{type(model).__name__} does not dispatch its attention through transformers' AttentionInterface in "
        f"transformers {transformers.__version__} ({type(module).__name__} hard-codes eager/sdpa/flash "
        "attention), so attn_implementation='circuit_stats' cannot be plugged in: from_pretrained(..., "
        "attn_implementation='circuit_stats') fails with KeyError: 'circuit_stats' and "
        "set_attn_implementation('circuit_stats') only logs a warning and keeps the current implementation. "
        "Use attn_implementation='eager' with output_attentions=True and "
        "circuit_stats.kernels.stats_from_probabilities on short inputs (materialised matrices), or a "
        "transformers release where this model uses the AttentionInterface.")


def family_config(family: str, **config_kw) -> PretrainedConfig:
    """The tiny config of ``family`` (see ``TINY_CONFIGS``)."""
    if family not in TINY_CONFIGS:
        raise ValueError(f"family must be one of {sorted(TINY_CONFIGS)}, got {family!r}")
    return TINY_CONFIGS[family](**config_kw)


def missing_config_class(family: str) -> Optional[str]:
    """The name of ``family``'s config class when the running transformers lacks it, else None."""
    name = getattr(TINY_CONFIGS[family], "config_class", None)
    return name if name is not None and _config_class(name) is None else None


def tiny_model(family: str, attn_implementation: str = "circuit_stats", seed: int = 0,
               dtype: torch.dtype = torch.float32, **config_kw) -> torch.nn.Module:
    """A tiny random-weight causal LM of ``family`` (see ``TINY_CONFIGS``), in eval mode."""
    config = family_config(family, **config_kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return model.eval()

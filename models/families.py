"""Per-family facts and tiny random-weight models that keep each family's attention quirks.

The tiny configs are what tests and the demo use (no weights can be downloaded there). The real
models' facts are in ``docs/science.md``.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    LlamaConfig,
    OlmoConfig,
    OlmoeConfig,
    PretrainedConfig,
)


def tiny_pythia_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw) -> GPTNeoXConfig:
    """GPT-NeoX with Pythia's quirks: partial rotary (25%) and parallel residual."""
    kw.setdefault("intermediate_size", 4 * hidden)
    return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, rotary_pct=0.25, use_parallel_residual=True,
                         max_position_embeddings=2048, bos_token_id=0, eos_token_id=0,
                         tie_word_embeddings=False, **kw)


def tiny_olmo_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4,
                     clip_qkv: float = 2.0, **kw) -> OlmoConfig:
    """OLMo: non-parametric LayerNorm (built in) and clip_qkv. The clip is set low (the real model
    uses 8.0) so that it actually clips random tiny-model activations (std ~2.4 here)."""
    return OlmoConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=4 * hidden,
                      clip_qkv=clip_qkv, max_position_embeddings=4096, pad_token_id=1, eos_token_id=2,
                      bos_token_id=None, **kw)


def tiny_olmoe_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw) -> OlmoeConfig:
    """OLMoE: RMSNorm on q and k over the full width (built in) and a few top-k experts."""
    return OlmoeConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=2 * hidden,
                       num_experts=4, num_experts_per_tok=2, max_position_embeddings=4096, pad_token_id=1,
                       eos_token_id=2, bos_token_id=None, **kw)


def tiny_llama_gqa_config(vocab_size: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, **kw) -> LlamaConfig:
    """Any other model dispatching through the attention interface; here with GQA (2 kv heads)."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                       intermediate_size=4 * hidden, max_position_embeddings=2048, pad_token_id=0,
                       bos_token_id=None, eos_token_id=None, **kw)


TINY_CONFIGS: dict[str, Callable[..., PretrainedConfig]] = {
    "pythia": tiny_pythia_config,
    "olmo": tiny_olmo_config,
    "olmoe": tiny_olmoe_config,
    "llama-gqa": tiny_llama_gqa_config,
}


def tiny_model(family: str, attn_implementation: str = "circuit_stats", seed: int = 0,
               dtype: torch.dtype = torch.float32, **config_kw) -> torch.nn.Module:
    """A tiny random-weight causal LM of ``family`` (see ``TINY_CONFIGS``), in eval mode."""
    if family not in TINY_CONFIGS:
        raise ValueError(f"family must be one of {sorted(TINY_CONFIGS)}, got {family!r}")
    config = TINY_CONFIGS[family](**config_kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return model.eval()

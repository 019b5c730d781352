"""`tiny`: the built-in model for smoke tests and benchmarks, needing no download.

A small Llama over bytes (256 byte tokens plus BOS, EOS, PAD) whose weights
come from a CPU generator seeded 0, so every machine builds the same model.
Its text is noise; what it offers is real shapes and real compute.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..model_config import ModelConfig
from .llama import CausalLM

BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID = 256, 257, 258
_SEED, _STD = 0, 0.02


def tiny_config() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        architecture="LlamaForCausalLM",
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=259,
        max_model_len=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
        tie_word_embeddings=False,
        attention_bias=False,
        qk_norm=False,
        dtype="float32",
        eos_token_ids=(EOS_TOKEN_ID,),
        bos_token_id=BOS_TOKEN_ID,
        original_max_position_embeddings=2048,
    )


def tiny_weights(config: ModelConfig | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named float32 weights, drawn in a fixed order: N(0, 0.02) matrices, unit norms."""
    c = config or tiny_config()
    g = torch.Generator().manual_seed(_SEED)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float32) * _STD

    yield "model.embed_tokens.weight", normal(c.vocab_size, c.hidden_size)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", torch.ones(c.hidden_size)
        yield p + "self_attn.q_proj.weight", normal(c.q_size, c.hidden_size)
        yield p + "self_attn.k_proj.weight", normal(c.kv_size, c.hidden_size)
        yield p + "self_attn.v_proj.weight", normal(c.kv_size, c.hidden_size)
        yield p + "self_attn.o_proj.weight", normal(c.hidden_size, c.q_size)
        yield p + "post_attention_layernorm.weight", torch.ones(c.hidden_size)
        yield p + "mlp.gate_proj.weight", normal(c.intermediate_size, c.hidden_size)
        yield p + "mlp.up_proj.weight", normal(c.intermediate_size, c.hidden_size)
        yield p + "mlp.down_proj.weight", normal(c.hidden_size, c.intermediate_size)
    yield "model.norm.weight", torch.ones(c.hidden_size)
    yield "lm_head.weight", normal(c.vocab_size, c.hidden_size)


def build_tiny(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> CausalLM:
    """The tiny model in eval mode with gradients off."""
    model = CausalLM(tiny_config(), dtype=dtype, device=device)
    model.load_weights(tiny_weights())
    return model.eval().requires_grad_(False)

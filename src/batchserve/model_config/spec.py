"""ModelConfig: one description of a decoder model, shared by the torch engine and the simulator.

The engine reads its numerics (RoPE, norms, biases, EOS ids) and the
simulator its shapes (FLOPs, weight bytes, KV size); both get them from the
same HF config.json reader, so the two cannot disagree about a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class ModelConfigError(ValueError):
    """A model's config.json cannot be read; the message names the model and the field."""


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a Llama-style decoder (GQA, RMSNorm, rotary, gated-SiLU MLP, optional MoE)."""

    name: str
    """Label in reports and errors: a catalog key, a checkpoint directory or _name_or_path."""
    architecture: str
    """HF architecture, e.g. "LlamaForCausalLM", "MixtralForCausalLM", "Qwen3ForCausalLM"."""
    hidden_size: int
    intermediate_size: int
    """Dense MLP width; for MoE the per-expert width."""
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    """Config head_dim if present, else hidden_size // num_attention_heads."""
    vocab_size: int
    max_model_len: int
    """Longest sequence the model serves; see context_length.max_model_len for the RoPE rule."""
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    """Bias on the q/k/v projections (Qwen2 always; Llama/Qwen3 when config says so)."""
    o_proj_bias: bool = False
    """Bias on the output projection: Llama/Qwen3 `attention_bias` covers it, Qwen2's does not."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """Per-head RMSNorm on q and k before RoPE (Qwen3)."""
    num_experts: int = 0
    """0 = dense MLP."""
    num_experts_per_tok: int = 0
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    """None for plain RoPE; else a dict with "rope_type" and its parameters (rope_theta removed;
    original_max_position_embeddings filled in for llama3/yarn)."""
    partial_rotary_factor: float = 1.0
    """Share of head_dim that RoPE rotates."""
    sliding_window: int | None = None
    """Each query sees only the last `sliding_window` keys (itself included), on every layer."""
    original_max_position_embeddings: int | None = None
    """max_position_embeddings as written; dynamic NTK scales RoPE only beyond it."""
    dtype: str = "float32"
    """Checkpoint dtype (dtype / torch_dtype), normalised to a torch name such as "bfloat16"."""
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        for fname in ("hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
                      "num_kv_heads", "head_dim", "vocab_size", "max_model_len"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelConfigError(f"{where}: {fname} must be an integer >= 1, got {v!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ModelConfigError(f"{where}: num_attention_heads ({self.num_attention_heads}) "
                                   f"is not a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.num_experts < 0 or self.num_experts_per_tok < 0:
            raise ModelConfigError(f"{where}: num_experts and num_experts_per_tok must be >= 0")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ModelConfigError(f"{where}: num_experts_per_tok ({self.num_experts_per_tok}) must be "
                                   f"between 1 and num_experts ({self.num_experts})")
        if not self.num_experts and self.num_experts_per_tok:
            raise ModelConfigError(f"{where}: num_experts_per_tok is set but num_experts is 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields; `ModelConfig(**d)` rebuilds it."""
        return asdict(self)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_size(self) -> int:
        """Width of the query projection output (num_attention_heads * head_dim; may differ from hidden_size)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim

    # --- parameter counts: they set the simulator's weight bytes ------------------

    def attention_params_per_layer(self) -> int:
        """q, k, v, o projections (+ their biases, + q/k norm weights)."""
        h = self.hidden_size
        n = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        if self.attention_bias:
            n += self.q_size + 2 * self.kv_size
        if self.o_proj_bias:
            n += h
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    def expert_params(self) -> int:
        """One gated MLP (gate, up, down, + biases); for a dense model, the layer's MLP."""
        bias = 2 * self.intermediate_size + self.hidden_size if self.mlp_bias else 0
        return 3 * self.hidden_size * self.intermediate_size + bias

    def mlp_params_per_layer(self) -> int:
        """Every expert plus the router for MoE; the single MLP otherwise."""
        if self.is_moe:
            return self.num_experts * self.expert_params() + self.hidden_size * self.num_experts
        return self.expert_params()

    def embedding_params(self) -> int:
        """Input embedding plus a separate lm_head unless the two are tied."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_params(self) -> int:
        """Exact parameter count from the shapes (embeddings, layers, norms)."""
        per_layer = self.attention_params_per_layer() + self.mlp_params_per_layer() + 2 * self.hidden_size
        return self.embedding_params() + self.num_layers * per_layer + self.hidden_size

    def num_active_params(self) -> int:
        """Parameters touched per token: only the top-k experts of an MoE layer; embeddings counted."""
        if not self.is_moe:
            return self.num_params()
        idle = (self.num_experts - self.num_experts_per_tok) * self.expert_params()
        return self.num_params() - self.num_layers * idle

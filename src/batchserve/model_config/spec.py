"""ModelConfig: one description of a decoder model, shared by the torch engine and the simulator.

The engine reads its numerics (RoPE, norms, biases, EOS ids) and the
simulator its shapes (FLOPs, weight bytes, KV size); both get them from the
same HF config.json reader, so the two cannot disagree about a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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
    norm_topk_prob: bool = True
    """Renormalise the top-k router probabilities to sum to 1 (Mixtral always; Qwen MoE when its config says)."""
    scoring_func: str = "softmax"
    """How the router turns logits into expert probabilities (DeepSeek's field name; these families use softmax)."""
    shared_expert_intermediate_size: int = 0
    """Width of an always-on shared expert beside the routed ones, scaled by a sigmoid gate (Qwen2-MoE); 0 = none."""
    dense_layers: tuple[int, ...] = ()
    """Layers of an MoE model that run a dense MLP instead (Qwen MoE's mlp_only_layers and decoder_sparse_step)."""
    dense_intermediate_size: int = 0
    """Width of those dense MLPs (Qwen MoE's intermediate_size); 0 = intermediate_size."""
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
        if any(not 0 <= i < self.num_layers for i in self.dense_layers):
            raise ModelConfigError(f"{where}: dense layers {list(self.dense_layers)} must lie in "
                                   f"0..{self.num_layers - 1}")

    def with_max_model_len(self, limit: int | None) -> ModelConfig:
        """This config serving at most `limit` tokens a sequence (vLLM's `max_model_len`), None: unchanged.

        A cap, never an extension: beyond the derived length RoPE was not trained, so a larger value is refused.
        The model's RoPE tables keep the derived length, so capping changes no logits.
        """
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.max_model_len:
            raise ModelConfigError(f"max_model_len={limit!r}: {self.name!r} serves at most {self.max_model_len} "
                                   f"tokens (its max_position_embeddings with RoPE scaling); give an integer "
                                   f"from 1 to {self.max_model_len}, or leave it unset")
        return replace(self, max_model_len=limit)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields; `ModelConfig(**d)` rebuilds it."""
        return asdict(self)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer `layer` routes its tokens to experts (else it runs a dense MLP)."""
        return self.is_moe and layer not in self.dense_layers

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - len(self.dense_layers) if self.is_moe else 0

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

    def expert_params(self, width: int | None = None) -> int:
        """One gated MLP (gate, up, down, + biases) of `width` (default: an expert's, or a dense model's MLP)."""
        width = width or self.intermediate_size
        bias = 2 * width + self.hidden_size if self.mlp_bias else 0
        return 3 * self.hidden_size * width + bias

    def mlp_params_per_layer(self) -> int:
        """Every expert, the router and any shared expert with its gate on an MoE layer; the single MLP otherwise."""
        if not self.is_moe:
            return self.expert_params()
        n = self.num_experts * self.expert_params() + self.hidden_size * self.num_experts
        if self.shared_expert_intermediate_size:
            n += self.expert_params(self.shared_expert_intermediate_size) + self.hidden_size
        return n

    def embedding_params(self) -> int:
        """Input embedding plus a separate lm_head unless the two are tied."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_params(self) -> int:
        """Exact parameter count from the shapes (embeddings, layers, norms)."""
        per_layer = self.attention_params_per_layer() + 2 * self.hidden_size
        num_dense = self.num_layers - self.num_moe_layers
        mlps = (self.num_moe_layers * self.mlp_params_per_layer()
                + num_dense * self.expert_params(self.dense_intermediate_size if self.is_moe else None))
        return self.embedding_params() + self.num_layers * per_layer + mlps + self.hidden_size

    def num_active_params(self) -> int:
        """Parameters touched per token: only the top-k experts of an MoE layer; embeddings counted."""
        if not self.is_moe:
            return self.num_params()
        idle = (self.num_experts - self.num_experts_per_tok) * self.expert_params()
        return self.num_params() - self.num_moe_layers * idle

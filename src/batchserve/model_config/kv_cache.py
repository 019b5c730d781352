"""The one KV-cache size formula: bytes a token (or a block of tokens) takes on one rank.

Per layer a token stores a key and a value vector for each KV head. Under
tensor parallelism each rank keeps its share of the KV heads; when TP exceeds
the KV head count, every rank keeps a full head (heads are replicated, as in vLLM).
"""

from __future__ import annotations

from .spec import ModelConfig


def kv_heads_per_rank(num_kv_heads: int, tp: int = 1) -> int:
    """KV heads one TP rank holds: ceil(num_kv_heads / tp), at least one (replicated when tp > heads)."""
    return max(1, -(-num_kv_heads // tp))


def kv_bytes_per_token(model: ModelConfig, dtype_bytes: float, tp: int = 1, num_layers: int | None = None) -> float:
    """K and V bytes of one token on one TP rank over `num_layers` layers (default: all of them).

    `dtype_bytes` is the KV element width (2 for bf16, 1 for fp8); pass a pipeline
    stage's layer count as `num_layers` for one PP stage, or 1 for a single layer.
    """
    layers = model.num_layers if num_layers is None else num_layers
    return 2 * layers * kv_heads_per_rank(model.num_kv_heads, tp) * model.head_dim * dtype_bytes


def kv_bytes_per_block(model: ModelConfig, block_size: int, dtype_bytes: float, tp: int = 1,
                       num_layers: int | None = None) -> float:
    """Bytes one KV-cache block of `block_size` tokens takes: what sizing num_blocks divides by."""
    return block_size * kv_bytes_per_token(model, dtype_bytes, tp, num_layers)

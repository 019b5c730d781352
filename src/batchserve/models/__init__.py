"""Torch model layer: Llama-family decoders, paged attention, RoPE, weight loading.

Importing this package needs torch; `core/` and `sim/` never import it.
"""

from .attention import (AttentionConfig, AttentionMetadata, PagedAttention, allocate_kv_cache,
                        kv_cache_bytes_per_block)
from .config import SUPPORTED_ARCHITECTURES, ModelConfig, ModelLoadError
from .llama import CausalLM
from .loader import load_model
from .rope import RotaryEmbedding
from .tiny import build_tiny, tiny_config

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AttentionConfig",
    "AttentionMetadata",
    "CausalLM",
    "ModelConfig",
    "ModelLoadError",
    "PagedAttention",
    "RotaryEmbedding",
    "allocate_kv_cache",
    "build_tiny",
    "kv_cache_bytes_per_block",
    "load_model",
    "tiny_config",
]

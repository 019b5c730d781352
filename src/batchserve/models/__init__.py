"""Torch model layer: Llama-family decoders, paged attention, RoPE, weight loading.

Importing this package needs torch; `core/` and `sim/` never import it.
"""

from ..attention_layout import AttentionConfig
from .attention import AttentionMetadata, PagedAttention, allocate_kv_cache
from .config import SUPPORTED_ARCHITECTURES, ModelLoadError, load_model_config
from .llama import CausalLM
from .loader import load_model
from .rope import RotaryEmbedding
from .tiny import build_tiny, tiny_config

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AttentionConfig",
    "AttentionMetadata",
    "CausalLM",
    "ModelLoadError",
    "PagedAttention",
    "RotaryEmbedding",
    "allocate_kv_cache",
    "build_tiny",
    "load_model",
    "load_model_config",
    "tiny_config",
]

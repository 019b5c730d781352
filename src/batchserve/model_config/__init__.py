"""One torch-free description of a model, from HF config.json or GGUF metadata, for the engine and the simulator."""

from .context_length import max_model_len, rope_parameters
from .dtype import serving_dtype
from .gguf_reader import GGUF_ARCHITECTURES, from_gguf_metadata
from .hf_reader import architecture_of, from_hf_config
from .kv_cache import kv_bytes_per_block, kv_bytes_per_token, kv_heads_per_rank
from .spec import ModelConfig, ModelConfigError

__all__ = [
    "GGUF_ARCHITECTURES",
    "ModelConfig",
    "ModelConfigError",
    "architecture_of",
    "from_gguf_metadata",
    "from_hf_config",
    "kv_bytes_per_block",
    "kv_bytes_per_token",
    "kv_heads_per_rank",
    "max_model_len",
    "rope_parameters",
    "serving_dtype",
]

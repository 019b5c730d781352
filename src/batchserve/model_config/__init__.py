"""One torch-free description of a model, read from HF config.json, for the engine and the simulator alike."""

from .context_length import max_model_len, rope_parameters
from .hf_reader import architecture_of, from_hf_config
from .kv_cache import kv_bytes_per_block, kv_bytes_per_token, kv_heads_per_rank
from .spec import ModelConfig, ModelConfigError

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "architecture_of",
    "from_hf_config",
    "kv_bytes_per_block",
    "kv_bytes_per_token",
    "kv_heads_per_rank",
    "max_model_len",
    "rope_parameters",
]

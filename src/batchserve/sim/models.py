"""Model catalog for the roofline cost model: named HF config.json dicts and lookups.

The catalog is stored as the published Hugging Face config.json dicts and
parsed by the one reader (batchserve.model_config.from_hf_config) that also
reads a user's config.json and the engine's checkpoints, so the catalog, user
files and the engine cannot drift apart.

Scope: Llama-style decoders (RMSNorm, rotary, gated-SiLU MLP, GQA) and their
Mixtral / Qwen MoE variants, Qwen2-MoE's shared expert and dense layers
included. Multi-latent attention (DeepSeek) is not modelled.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from typing import Any

from ..gguf_file import is_gguf, open_gguf
from ..model_config import ModelConfig, from_hf_config
from .hardware import CatalogError


# --- The catalog: published config.json contents ---------------------------------
# Fields a roofline needs, copied verbatim from each repo's config.json on the HF Hub.
# Fields a file does not publish are left out (e.g. Llama-2's files carry no
# rope_theta; transformers defaults it to 10000.0).

_LLAMA31_ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

HF_CONFIGS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
    "llama-2-7b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False, "torch_dtype": "float16",
    },
    # https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
    "llama-2-13b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False, "torch_dtype": "float16",
    },
    # https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
    "llama-2-70b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False, "torch_dtype": "float16",
    },
    # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA31_ROPE_SCALING, "rms_norm_eps": 1e-05,
        "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
    "llama-3.1-70b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA31_ROPE_SCALING, "rms_norm_eps": 1e-05,
        "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json
    "llama-3.1-405b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
        "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA31_ROPE_SCALING, "rms_norm_eps": 1e-05,
        "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3/blob/main/config.json
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-05,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-05,
        "num_local_experts": 8, "num_experts_per_tok": 2,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json
    # (the base Qwen/Qwen2.5-7B file says max_position_embeddings 131072; same shapes)
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/config.json
    # (the base Qwen/Qwen2.5-72B file says max_position_embeddings 131072; same shapes)
    "qwen2.5-72b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    # https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json
    "qwen3-8b": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000,
        "rms_norm_eps": 1e-06, "attention_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
}

MODELS: dict[str, ModelConfig] = {key: from_hf_config(cfg, name=key) for key, cfg in HF_CONFIGS.items()}
"""The model catalog, keyed by name."""

# Spellings that survive the generic normalisation in get_model but still mean a catalog entry.
_ALIASES = {
    "mistral-7b-v0.3": "mistral-7b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
}


def _catalog_key(name: str) -> str:
    """Turn "meta-llama/Meta-Llama-3.1-8B-Instruct" or "Qwen/Qwen2.5-7B-Instruct" into a catalog-style key."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = key.rsplit("/", 1)[-1]
    key = re.sub(r"^meta-(?=llama)", "", key)
    key = re.sub(r"-(instruct|chat|hf)(?=-|$)", "", key)
    return _ALIASES.get(key, key)


def get_model(name_or_path: str) -> ModelConfig:
    """Resolve a catalog key or HF id (case-insensitive), a config.json path or its directory, or a GGUF file."""
    text = str(name_or_path).strip()
    if is_gguf(text):
        return open_gguf(text).model_config()
    if os.path.isfile(os.path.join(text, "config.json")):
        return load_model_file(os.path.join(text, "config.json"))
    if text.lower().endswith(".json") or os.path.isfile(text):
        return load_model_file(text)
    for key in (text.lower(), _catalog_key(text)):
        if key in MODELS:
            return MODELS[key]
    hint = f" (directory {text!r} has no config.json)" if os.path.isdir(text) else ""
    raise CatalogError(
        f"unknown model {name_or_path!r}{hint}; valid names: {', '.join(MODELS)}, "
        f"or a path to a HF config.json (or a directory holding one)"
    )


def load_model_file(path: str | os.PathLike[str]) -> ModelConfig:
    """Parse a config.json file; the shape is named after its directory (the HF repo's usual layout)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CatalogError(f"model config {path!r} does not exist; valid names: {', '.join(MODELS)}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CatalogError(f"cannot read model config {path!r}: {e}") from None
    # Name it after the HF repo directory for config.json, else after the file itself.
    base = os.path.basename(path)
    if base == "config.json":
        label = os.path.basename(os.path.dirname(os.path.abspath(path)))
    else:
        label = os.path.splitext(base)[0]
    model = from_hf_config(config, name=path)  # errors name the file
    return replace(model, name=label or path)

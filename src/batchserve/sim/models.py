"""Model-shape catalog for the roofline cost model.

A ModelShape keeps only the parts of a transformer's config that decide its
FLOPs, weight bytes and KV-cache size. The catalog is stored as the published
Hugging Face config.json dicts and parsed by the same `from_hf_config` that reads
a user's config.json, so the catalog and user files cannot drift apart.

Scope: Llama-style decoders (RMSNorm, rotary, gated-SiLU MLP, GQA) and their
Mixtral / Qwen MoE variants. Shared experts (Qwen1.5/2-MoE) and multi-latent
attention (DeepSeek) are not modelled.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from batchserve.sim.hardware import CatalogError


@dataclass(frozen=True)
class ModelShape:
    """The parts of a transformer's config that decide its FLOPs, bytes and KV size."""

    name: str
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
    """max_position_embeddings."""
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    """QKV projection bias (Qwen2); negligible for cost, recorded so num_params is exact."""
    num_experts: int = 0
    """0 = dense MLP."""
    num_experts_per_tok: int = 0

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        for fname in ("hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
                      "num_kv_heads", "head_dim", "vocab_size", "max_model_len"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CatalogError(f"{where}: {fname} must be an integer >= 1, got {v!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise CatalogError(f"{where}: num_attention_heads ({self.num_attention_heads}) "
                               f"is not a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.num_experts < 0 or self.num_experts_per_tok < 0:
            raise CatalogError(f"{where}: num_experts and num_experts_per_tok must be >= 0")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise CatalogError(f"{where}: num_experts_per_tok ({self.num_experts_per_tok}) must be "
                               f"between 1 and num_experts ({self.num_experts})")
        if not self.num_experts and self.num_experts_per_tok:
            raise CatalogError(f"{where}: num_experts_per_tok is set but num_experts is 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields; `ModelShape(**d)` rebuilds it."""
        return asdict(self)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def has_qk_norm(self) -> bool:
        """Qwen3 normalises q and k per head (one head_dim-sized RMSNorm weight each, per layer)."""
        return self.architecture.lower().startswith("qwen3")

    @property
    def q_size(self) -> int:
        """Width of the query projection output (num_attention_heads * head_dim; may differ from hidden_size)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim

    def attention_params_per_layer(self) -> int:
        """q, k, v, o projections (+ QKV bias, + q/k norm weights)."""
        h = self.hidden_size
        n = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        if self.attention_bias:
            n += self.q_size + 2 * self.kv_size
        if self.has_qk_norm:
            n += 2 * self.head_dim
        return n

    def expert_params(self) -> int:
        """One gated MLP (gate, up, down); for a dense model, the layer's MLP."""
        return 3 * self.hidden_size * self.intermediate_size

    def mlp_params_per_layer(self) -> int:
        """Every expert plus the router for MoE; the single MLP otherwise."""
        if self.is_moe:
            return self.num_experts * self.expert_params() + self.hidden_size * self.num_experts
        return self.expert_params()

    def embedding_params(self) -> int:
        """Input embedding plus a separate lm_head unless the two are tied."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_params(self) -> int:
        """Exact parameter count from the shapes (embeddings, layers, norms); sets weight bytes."""
        per_layer = self.attention_params_per_layer() + self.mlp_params_per_layer() + 2 * self.hidden_size
        return self.embedding_params() + self.num_layers * per_layer + self.hidden_size

    def num_active_params(self) -> int:
        """Parameters touched per token: only the top-k experts of an MoE layer; embeddings counted."""
        if not self.is_moe:
            return self.num_params()
        idle = (self.num_experts - self.num_experts_per_tok) * self.expert_params()
        return self.num_params() - self.num_layers * idle

    def kv_bytes_per_token(self, kv_dtype_bytes: float = 2) -> float:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return float(2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype_bytes)


# --- Parsing ----------------------------------------------------------------------

def from_hf_config(config: Mapping[str, Any], name: str | None = None) -> ModelShape:
    """Parse a Hugging Face config.json dict into a ModelShape.

    `name` labels the shape and every error; it defaults to the config's
    `_name_or_path`. Multimodal configs with a nested `text_config` use that.
    """
    if not isinstance(config, Mapping):
        raise CatalogError(f"model config {name or ''!r} must be a JSON object, got {type(config).__name__}")
    label = name or str(config.get("_name_or_path") or "") or "<config>"
    if "hidden_size" not in config and isinstance(config.get("text_config"), Mapping):
        config = {**config["text_config"], "architectures": config.get("architectures")}

    def get_int(key: str, default: int | None = None) -> int:
        """An integer field; absent or null means `default`, or an error when there is none."""
        v = config.get(key)
        if v is None:
            if default is None:
                raise CatalogError(f"model config {label!r} is missing required field {key!r}")
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise CatalogError(f"model config {label!r}: field {key!r} must be an integer, got {v!r}")
        return v

    archs = config.get("architectures") or []
    architecture = str(archs[0]) if isinstance(archs, list) and archs else str(config.get("model_type") or "")
    model_type = str(config.get("model_type") or "")

    hidden = get_int("hidden_size")
    heads = get_int("num_attention_heads")
    # Mixtral says num_local_experts; Qwen MoE says num_experts and keeps the
    # expert width in moe_intermediate_size (intermediate_size is then a dense width).
    num_experts = get_int("num_local_experts", 0) or get_int("num_experts", 0)
    if num_experts:
        if config.get("moe_intermediate_size") is not None:
            intermediate = get_int("moe_intermediate_size")
        else:
            intermediate = get_int("intermediate_size")
        per_tok = get_int("num_experts_per_tok")
    else:
        intermediate = get_int("intermediate_size")
        per_tok = 0

    is_qwen2 = architecture.startswith("Qwen2") or model_type.startswith("qwen2")
    return ModelShape(
        name=name or str(config.get("_name_or_path") or architecture or "custom"),
        architecture=architecture,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=get_int("num_hidden_layers"),
        num_attention_heads=heads,
        num_kv_heads=get_int("num_key_value_heads", heads),
        head_dim=get_int("head_dim", hidden // heads if heads > 0 else 0),
        vocab_size=get_int("vocab_size"),
        max_model_len=get_int("max_position_embeddings"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)) or is_qwen2,
        num_experts=num_experts,
        num_experts_per_tok=per_tok,
    )


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

MODELS: dict[str, ModelShape] = {key: from_hf_config(cfg, name=key) for key, cfg in HF_CONFIGS.items()}
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


def get_model(name_or_path: str) -> ModelShape:
    """Resolve a catalog key or HF id (case-insensitive), a config.json path, or a directory holding one."""
    text = str(name_or_path).strip()
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


def load_model_file(path: str | os.PathLike[str]) -> ModelShape:
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
    shape = from_hf_config(config, name=path)  # errors name the file
    return replace(shape, name=label or path)

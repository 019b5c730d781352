"""ModelConfig: the parts of a Hugging Face config.json the torch model needs.

One parser for transformers 4.x files (`rope_theta` and `rope_scaling` at the
top level, `torch_dtype`) and 5.x files (`rope_parameters` holding the theta
too, `dtype`), so the model code never looks at raw dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..sim.models import ModelShape

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")

# Files that name no architecture still carry model_type.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}
# RoPE keys that belong to the config proper, not to the scaling recipe.
_NOT_SCALING_KEYS = ("rope_theta", "type", "rope_type")


class ModelLoadError(ValueError):
    """A model cannot be built or loaded; the message says what to fix."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3)."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_model_len: int
    """Longest sequence the model serves: max_position_embeddings, times the factor of a
    context-extending RoPE scaling (linear, dynamic, yarn) as vLLM does."""
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    """None for plain RoPE; else a dict with "rope_type" in SUPPORTED_ROPE_TYPES and its
    parameters (rope_theta removed; original_max_position_embeddings filled in for llama3/yarn)."""
    tie_word_embeddings: bool
    attention_bias: bool
    """Bias on the q/k/v projections (Qwen2 always; Llama/Qwen3 when config says so)."""
    qk_norm: bool
    """Per-head RMSNorm on q and k before RoPE (Qwen3)."""
    dtype: str
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    o_proj_bias: bool = False
    """Bias on the output projection: Llama/Qwen3 `attention_bias` covers it, Qwen2's does not."""
    mlp_bias: bool = False
    sliding_window: int | None = None
    """Each query sees only the last `sliding_window` keys (itself included); Mistral v0.1."""
    original_max_position_embeddings: int | None = None
    """max_position_embeddings as written; dynamic NTK scales RoPE only beyond it."""

    def sim_shape(self, name: str) -> ModelShape:
        """The simulator's view of this model (its cost depends on shapes only)."""
        return ModelShape(
            name=name, architecture=self.architecture, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            vocab_size=self.vocab_size, max_model_len=self.max_model_len,
            tie_word_embeddings=self.tie_word_embeddings, attention_bias=self.attention_bias,
        )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], generation_config: Mapping[str, Any] | None = None) -> ModelConfig:
        """Parse config.json (and generation_config.json, which wins for EOS ids)."""
        return _parse(config, generation_config or {})


def _parse(config: Mapping[str, Any], gen: Mapping[str, Any]) -> ModelConfig:
    if not isinstance(config, Mapping):
        raise ModelLoadError(f"config.json must hold a JSON object, got {type(config).__name__}")
    arch = _architecture(config)

    def get(key: str, kind: type, default: Any = None) -> Any:
        v = config.get(key)
        if v is None:
            if default is None:
                raise ModelLoadError(f"config.json ({arch}) is missing required field {key!r}")
            return default
        if kind is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
            raise ModelLoadError(f"config.json ({arch}): field {key!r} must be {kind.__name__}, got {v!r}")
        return v

    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ModelLoadError(f"config.json ({arch}): hidden_act {act!r} is not supported (only 'silu')")
    hidden = get("hidden_size", int)
    heads = get("num_attention_heads", int)
    kv_heads = get("num_key_value_heads", int, heads)
    if heads % kv_heads:
        raise ModelLoadError(f"config.json ({arch}): num_attention_heads ({heads}) is not a multiple "
                             f"of num_key_value_heads ({kv_heads})")
    max_pos = get("max_position_embeddings", int)
    rope_theta, scaling = _rope(config, arch, max_pos)

    if arch == "Qwen2ForCausalLM":
        qkv_bias, o_bias = True, False  # transformers hard-codes Qwen2's q/k/v bias
    elif arch == "MistralForCausalLM":
        qkv_bias = o_bias = False
    else:
        qkv_bias = o_bias = bool(config.get("attention_bias", False))

    return ModelConfig(
        architecture=arch,
        hidden_size=hidden,
        intermediate_size=get("intermediate_size", int),
        num_layers=get("num_hidden_layers", int),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=get("head_dim", int, hidden // heads),
        vocab_size=get("vocab_size", int),
        max_model_len=_max_model_len(max_pos, scaling),
        rms_norm_eps=get("rms_norm_eps", float, 1e-6),
        rope_theta=rope_theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        qk_norm=arch == "Qwen3ForCausalLM",
        dtype=_dtype(config, arch),
        eos_token_ids=_token_ids(gen.get("eos_token_id", config.get("eos_token_id"))),
        bos_token_id=_first_id(config["bos_token_id"] if config.get("bos_token_id") is not None
                               else gen.get("bos_token_id")),
        o_proj_bias=o_bias,
        mlp_bias=bool(config.get("mlp_bias", False)) and arch == "LlamaForCausalLM",
        sliding_window=_sliding_window(config, arch),
        original_max_position_embeddings=max_pos,
    )


def _architecture(config: Mapping[str, Any]) -> str:
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else _MODEL_TYPES.get(str(config.get("model_type")), "")
    if arch not in SUPPORTED_ARCHITECTURES:
        shown = arch or f"model_type {config.get('model_type')!r}"
        raise ModelLoadError(f"unsupported architecture {shown}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _dtype(config: Mapping[str, Any], arch: str) -> str:
    raw = config.get("dtype") or config.get("torch_dtype") or "float32"
    name = _DTYPE_ALIASES.get(str(raw), str(raw)).removeprefix("torch.")
    if name not in SUPPORTED_DTYPES:
        raise ModelLoadError(f"config.json ({arch}): dtype {raw!r} is not supported; use one of "
                             f"{', '.join(SUPPORTED_DTYPES)}")
    return name


def _rope(config: Mapping[str, Any], arch: str, max_pos: int) -> tuple[float, dict | None]:
    """(rope_theta, normalized scaling) from either the 4.x or the 5.x layout."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ModelLoadError(f"config.json ({arch}): rope_parameters must be an object, got {params!r}")
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(f"config.json ({arch}): rope type {rope_type!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ModelLoadError(f"config.json ({arch}): partial_rotary_factor {partial} is not supported")
    if rope_type == "default":
        return float(theta), None
    scaling = {k: v for k, v in params.items() if k not in _NOT_SCALING_KEYS}
    scaling["rope_type"] = rope_type
    required = {"linear": ("factor",), "dynamic": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor"), "yarn": ()}[rope_type]
    missing = [k for k in required if scaling.get(k) is None]
    if missing:
        raise ModelLoadError(f"config.json ({arch}): rope type {rope_type!r} needs {', '.join(missing)}")
    if rope_type in ("llama3", "yarn"):
        scaling.setdefault("original_max_position_embeddings", max_pos)
    if rope_type == "yarn" and scaling.get("factor") is None:  # DeepSeek-style files derive it
        scaling["factor"] = max_pos / scaling["original_max_position_embeddings"]
    return float(theta), scaling


def _max_model_len(max_pos: int, scaling: dict | None) -> int:
    """Context-extending scalings serve factor times the trained length; llama3 files already say so."""
    if scaling is None or scaling["rope_type"] == "llama3":
        return max_pos
    factor = scaling["factor"]
    if scaling["rope_type"] == "yarn":
        return max(max_pos, int(scaling["original_max_position_embeddings"] * factor))
    return max(max_pos, int(max_pos * factor))


def _sliding_window(config: Mapping[str, Any], arch: str) -> int | None:
    """Mistral's window covers every layer; Qwen's only the layers layer_types marks, if enabled."""
    window = config.get("sliding_window")
    if arch == "MistralForCausalLM":
        return int(window) if window else None
    if arch not in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") or not config.get("use_sliding_window") or not window:
        return None
    n = int(config["num_hidden_layers"])
    kinds = config.get("layer_types") or [
        "sliding_attention" if i >= config.get("max_window_layers", 28) else "full_attention" for i in range(n)]
    if all(k == "full_attention" for k in kinds):
        return None
    if all(k == "sliding_attention" for k in kinds):
        return int(window)
    raise ModelLoadError(f"config.json ({arch}): sliding-window attention on some layers only "
                         f"(max_window_layers) is not supported")


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = [value] if isinstance(value, int) else list(value)
    return tuple(dict.fromkeys(int(i) for i in ids))


def _first_id(value: Any) -> int | None:
    ids = _token_ids(value)
    return ids[0] if ids else None

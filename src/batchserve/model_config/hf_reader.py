"""The one reader of a Hugging Face config.json: a dict in, a ModelConfig out.

It reads transformers 4.x and 5.x files alike, Llama / Mistral / Qwen2 / Qwen3
and their Mixtral / Qwen MoE kin, and multimodal files through their
`text_config`. It judges whether a file is well formed, not whether a given
consumer supports it: the torch engine adds its own checks (models/config.py).
"""

from __future__ import annotations

from typing import Any, Mapping

from .context_length import max_model_len, rope_parameters
from .spec import ModelConfig, ModelConfigError

# Files that name no architecture still carry model_type.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
# Families whose sliding window is opt-in (use_sliding_window) and per layer (layer_types)
_QWEN_WINDOWED = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}
_REQUIRED = object()


def architecture_of(config: Mapping[str, Any]) -> str:
    """architectures[0], else the architecture model_type stands for, else model_type itself ("" if none)."""
    archs = config.get("architectures") or []
    if isinstance(archs, list) and archs:
        return str(archs[0])
    model_type = str(config.get("model_type") or "")
    return _MODEL_TYPES.get(model_type, model_type)


def from_hf_config(config: Mapping[str, Any], name: str | None = None,
                   generation_config: Mapping[str, Any] | None = None) -> ModelConfig:
    """Parse config.json (and generation_config.json, whose EOS ids win) into a ModelConfig.

    `name` labels the result and every error; it defaults to the file's `_name_or_path`.
    """
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"model config {name or ''!r} must be a JSON object, got {type(config).__name__}")
    label = name or str(config.get("_name_or_path") or "") or "<config>"
    where = f"model config {label!r}"
    if "hidden_size" not in config and isinstance(config.get("text_config"), Mapping):
        config = {**config["text_config"], "architectures": config.get("architectures")}
    gen = generation_config or {}
    arch = architecture_of(config)

    def get(key: str, kind: type, default: Any = _REQUIRED) -> Any:
        """A typed field; absent or null means `default`, or an error when there is none."""
        v = config.get(key)
        if v is None:
            if default is _REQUIRED:
                raise ModelConfigError(f"{where} is missing required field {key!r}")
            return default
        if kind is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, kind):
            raise ModelConfigError(f"{where}: field {key!r} must be {kind.__name__}, got {v!r}")
        return v

    hidden = get("hidden_size", int)
    heads = get("num_attention_heads", int)
    num_layers = get("num_hidden_layers", int)
    # Mixtral says num_local_experts; Qwen MoE says num_experts and keeps the
    # expert width in moe_intermediate_size (intermediate_size is then a dense width).
    num_experts = get("num_local_experts", int, 0) or get("num_experts", int, 0)
    dense_intermediate = get("intermediate_size", int, 0) if num_experts else 0
    if num_experts and config.get("moe_intermediate_size") is not None:
        intermediate = get("moe_intermediate_size", int)
    else:
        intermediate = get("intermediate_size", int)
    max_pos = get("max_position_embeddings", int)
    rope_theta, scaling, partial_rotary = rope_parameters(config, where, max_pos)
    qkv_bias, o_bias = _attention_biases(config, arch)
    return ModelConfig(
        name=name or str(config.get("_name_or_path") or arch or "custom"),
        architecture=arch,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=num_layers,
        num_attention_heads=heads,
        num_kv_heads=get("num_key_value_heads", int, heads),
        head_dim=get("head_dim", int, hidden // heads if heads > 0 else 0),
        vocab_size=get("vocab_size", int),
        max_model_len=max_model_len(max_pos, scaling, config.get("original_max_position_embeddings")),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        o_proj_bias=o_bias,
        mlp_bias=bool(config.get("mlp_bias", False)) and arch == "LlamaForCausalLM",
        qk_norm=arch.lower().startswith("qwen3"),
        num_experts=num_experts,
        num_experts_per_tok=get("num_experts_per_tok", int) if num_experts else 0,
        # Mixtral always renormalises its top-k; Qwen MoE only when norm_topk_prob says so (default False)
        norm_topk_prob=arch == "MixtralForCausalLM" or bool(config.get("norm_topk_prob", False)),
        scoring_func=str(config.get("scoring_func") or "softmax"),
        shared_expert_intermediate_size=get("shared_expert_intermediate_size", int, 0) if num_experts else 0,
        dense_layers=_dense_layers(config, where, num_layers) if num_experts else (),
        dense_intermediate_size=dense_intermediate,
        hidden_act=str(config.get("hidden_act") or "silu"),
        rms_norm_eps=get("rms_norm_eps", float, 1e-6),
        rope_theta=rope_theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial_rotary,
        sliding_window=_sliding_window(config, where, arch, num_layers),
        original_max_position_embeddings=max_pos,
        dtype=_dtype(config),
        eos_token_ids=_token_ids(gen.get("eos_token_id", config.get("eos_token_id"))),
        bos_token_id=_first_id(config["bos_token_id"] if config.get("bos_token_id") is not None
                               else gen.get("bos_token_id")),
    )


def _attention_biases(config: Mapping[str, Any], arch: str) -> tuple[bool, bool]:
    """(q/k/v bias, output-projection bias): transformers hard-codes Qwen2's and Mistral's."""
    if arch == "Qwen2MoeForCausalLM":
        return bool(config.get("qkv_bias", True)), False
    if arch.startswith("Qwen2") or str(config.get("model_type") or "").startswith("qwen2"):
        return True, False
    if arch == "MistralForCausalLM":
        return False, False
    bias = bool(config.get("attention_bias", False))
    return bias, bias


def _dense_layers(config: Mapping[str, Any], where: str, num_layers: int) -> tuple[int, ...]:
    """Layers that keep a dense MLP: those in mlp_only_layers and those decoder_sparse_step skips (as HF's Qwen MoE)."""
    step = config.get("decoder_sparse_step", 1)
    only = config.get("mlp_only_layers") or []
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ModelConfigError(f"{where}: field 'decoder_sparse_step' must be an integer >= 1, got {step!r}")
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers
                                         for i in only):
        raise ModelConfigError(f"{where}: field 'mlp_only_layers' must be a list of layer indices in "
                               f"0..{num_layers - 1}, got {only!r}")
    return tuple(i for i in range(num_layers) if i in only or (i + 1) % step)


def _dtype(config: Mapping[str, Any]) -> str:
    raw = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return _DTYPE_ALIASES.get(raw, raw).removeprefix("torch.")


def _sliding_window(config: Mapping[str, Any], where: str, arch: str, num_layers: int) -> int | None:
    """Mistral's and Mixtral's window covers every layer; Qwen's only the layers layer_types marks, if enabled."""
    window = config.get("sliding_window")
    if arch in ("MistralForCausalLM", "MixtralForCausalLM"):
        return int(window) if window else None
    if arch not in _QWEN_WINDOWED or not config.get("use_sliding_window") or not window:
        return None
    kinds = config.get("layer_types") or [
        "sliding_attention" if i >= config.get("max_window_layers", 28) else "full_attention"
        for i in range(num_layers)]
    if all(k == "full_attention" for k in kinds):
        return None
    if all(k == "sliding_attention" for k in kinds):
        return int(window)
    raise ModelConfigError(f"{where}: sliding-window attention on some layers only "
                           f"(max_window_layers) is not supported")


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = [value] if isinstance(value, int) else list(value)
    return tuple(dict.fromkeys(int(i) for i in ids))


def _first_id(value: Any) -> int | None:
    ids = _token_ids(value)
    return ids[0] if ids else None

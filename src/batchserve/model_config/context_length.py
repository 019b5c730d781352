"""RoPE parameters and the one rule for a model's context length (max_model_len).

Both transformers layouts are read: 4.x (`rope_theta` and `rope_scaling` at the
top level) and 5.x (`rope_parameters` holding the theta too).
"""

from __future__ import annotations

from typing import Any, Mapping

from .spec import ModelConfigError

# RoPE keys that belong to the config proper, not to the scaling recipe.
_NOT_SCALING_KEYS = ("rope_theta", "type", "rope_type", "partial_rotary_factor")
# Parameters each scaling cannot do without (transformers' rope_config_validation).
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor")}


def rope_parameters(config: Mapping[str, Any], where: str, max_position_embeddings: int,
                    ) -> tuple[float, dict | None, float]:
    """(rope_theta, normalised scaling or None, partial_rotary_factor) from either layout.

    The scaling dict always says "rope_type" (legacy files say "type"); llama3 and
    yarn get original_max_position_embeddings, defaulting to the written
    max_position_embeddings as transformers does.
    """
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ModelConfigError(f"{where}: rope_parameters must be an object, got {params!r}")
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor")) or 1.0
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type == "default":
        return theta, None, float(partial)
    scaling = {k: v for k, v in params.items() if k not in _NOT_SCALING_KEYS}
    scaling["rope_type"] = rope_type
    missing = [k for k in _REQUIRED.get(rope_type, ()) if scaling.get(k) is None]
    if missing:
        raise ModelConfigError(f"{where}: rope type {rope_type!r} needs {', '.join(missing)}")
    if rope_type in ("llama3", "yarn"):
        scaling.setdefault("original_max_position_embeddings", max_position_embeddings)
    if rope_type == "yarn" and scaling.get("factor") is None:  # DeepSeek-style files derive it
        scaling["factor"] = max_position_embeddings / scaling["original_max_position_embeddings"]
    return theta, scaling, float(partial)


def max_model_len(max_position_embeddings: int, scaling: Mapping[str, Any] | None,
                  original_max_position_embeddings: int | None = None) -> int:
    """The longest sequence to serve, as vLLM derives it (`_get_and_verify_max_len`).

    - no scaling (or "default"): max_position_embeddings.
    - "linear", "dynamic": max_position_embeddings x factor; these files keep the
      trained length in max_position_embeddings (Llama-2 linear x2: 4096 -> 8192).
    - "yarn": original_max_position_embeddings x factor, whatever max_position_embeddings
      says (Qwen2.5-7B-Instruct yarn x4 over 32768: 131072).
    - "llama3": max_position_embeddings; the file already carries the extended
      length (Llama-3.1: 131072 with factor 8 over 8192).
    - "longrope": the top-level original_max_position_embeddings when the file has
      one (vLLM's default, so short prompts keep the short-factor quality), else
      max_position_embeddings, which the file already extends.
    - any other type: max_position_embeddings x its factor, or unchanged without one.
    """
    if not scaling:
        return max_position_embeddings
    rope_type = scaling["rope_type"]
    if rope_type == "llama3":
        return max_position_embeddings
    if rope_type in ("longrope", "su"):  # "su" is longrope's old name
        return original_max_position_embeddings or max_position_embeddings
    base = scaling["original_max_position_embeddings"] if rope_type == "yarn" else max_position_embeddings
    return int(base * scaling.get("factor", 1.0))

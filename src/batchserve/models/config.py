"""What the torch engine supports of a model description (from config.json or GGUF), and its config.json reader.

The shared reader (batchserve.model_config) says what a config.json means;
this module refuses what the torch model code cannot run, with a message
that names what to change.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..model_config import ModelConfig, architecture_of, from_hf_config

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
)
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
SUPPORTED_SCORING_FUNCS = ("softmax",)


class ModelLoadError(ValueError):
    """A model cannot be built or loaded; the message says what to fix."""


def load_model_config(config: Mapping[str, Any], generation_config: Mapping[str, Any] | None = None,
                      name: str | None = None) -> ModelConfig:
    """Read config.json (and generation_config.json) for the torch engine; ModelLoadError if it cannot run it."""
    if isinstance(config, Mapping):  # the reader names any other type
        _check_architecture(architecture_of(config))  # before any field: other families lack Llama's names
    return check_model_config(from_hf_config(config, name, generation_config), "config.json")


def check_model_config(model: ModelConfig, source: str) -> ModelConfig:
    """`model` if the torch engine runs it, else ModelLoadError naming `source` and what is unsupported."""
    _check_architecture(model.architecture)
    where = f"{source} ({model.architecture})"
    if model.hidden_act != "silu":
        raise ModelLoadError(f"{where}: hidden_act {model.hidden_act!r} is not supported (only 'silu')")
    if model.dtype not in SUPPORTED_DTYPES:
        raise ModelLoadError(f"{where}: dtype {model.dtype!r} is not supported; use one of "
                             f"{', '.join(SUPPORTED_DTYPES)}")
    rope_type = model.rope_scaling["rope_type"] if model.rope_scaling else "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(f"{where}: rope type {rope_type!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if model.is_moe and model.scoring_func not in SUPPORTED_SCORING_FUNCS:
        raise ModelLoadError(f"{where}: MoE router scoring_func {model.scoring_func!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED_SCORING_FUNCS)}")
    if model.partial_rotary_factor != 1.0:
        raise ModelLoadError(f"{where}: partial_rotary_factor {model.partial_rotary_factor} is not supported")
    return model


def _check_architecture(arch: str) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"unsupported architecture {arch or 'unknown'}; "
                             f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

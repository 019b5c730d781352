"""GGUF metadata (llama.cpp's key names) to the same ModelConfig a config.json gives.

A GGUF has no config.json: its metadata is the config, under keys prefixed by
the llama.cpp architecture name (`llama.block_count`, ...). They are renamed
into a config.json-shaped dict and read by the one HF reader, so a GGUF and
a checkpoint directory of the same model describe it identically. Plain
dicts in and out: the file itself is parsed elsewhere (batchserve.gguf_file).
"""

from __future__ import annotations

from typing import Any, Mapping

from .hf_reader import from_hf_config
from .spec import ModelConfig, ModelConfigError

# llama.cpp architecture -> HF architecture. Mistral checkpoints convert to "llama".
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
}
# llama.cpp key (after the architecture prefix) -> config.json field
_FIELDS = {
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "context_length": "max_position_embeddings",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}
# llama.cpp renormalises the top-k router weights of these architectures' MoE layers (norm_w in its graph
# builders) unless the file says otherwise in `<arch>.expert_weights_norm`
_NORM_TOPK_ARCHITECTURES = ("llama", "qwen3moe")
# general.file_type (llama.cpp's LlamaFileType) of unquantized files -> their dtype; quantized ones load as float32
_FILE_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}


def from_gguf_metadata(metadata: Mapping[str, Any], tensor_names: tuple[str, ...] | list[str],
                       name: str | None = None) -> ModelConfig:
    """A ModelConfig from a GGUF's metadata and tensor names.

    The vocabulary size comes from `<arch>.vocab_size`, else from the length of
    `tokenizer.ggml.tokens` (pass it in `metadata` then). EOS ids are the
    tokenizer's eos and end-of-turn ids, the tokens llama.cpp stops on.
    """
    arch = str(metadata.get("general.architecture") or "")
    label = name or str(metadata.get("general.name") or "") or "<gguf>"
    if arch not in GGUF_ARCHITECTURES:
        raise ModelConfigError(f"GGUF {label!r}: architecture {arch or 'unknown'!r} is not supported; "
                               f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    moe = bool(metadata.get(f"{arch}.expert_count"))
    # Mixtral converts to "llama" with experts
    config: dict[str, Any] = {"architectures": ["MixtralForCausalLM" if moe and arch == "llama"
                                                else GGUF_ARCHITECTURES[arch]]}
    for key, field in _FIELDS.items():
        if f"{arch}.{key}" in metadata:
            config[field] = metadata[f"{arch}.{key}"]
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in metadata:
        config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    config.update(_rope_scaling(metadata, arch, config))
    config["tie_word_embeddings"] = "output.weight" not in tensor_names  # llama.cpp drops a tied head
    config["attention_bias"] = config["qkv_bias"] = "blk.0.attn_q.bias" in tensor_names
    if moe:
        config["norm_topk_prob"] = bool(metadata.get(f"{arch}.expert_weights_norm",
                                                     arch in _NORM_TOPK_ARCHITECTURES))
    config["torch_dtype"] = _FILE_DTYPES.get(metadata.get("general.file_type", 0), "float32")
    config["bos_token_id"] = metadata.get("tokenizer.ggml.bos_token_id")
    config["eos_token_id"] = [metadata[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                              if metadata.get(k) is not None]
    return from_hf_config(config, name=label)


def _rope_scaling(metadata: Mapping[str, Any], arch: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """rope_scaling and partial_rotary_factor in config.json's spelling, where the file sets them."""
    out: dict[str, Any] = {}
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if kind and kind != "none":
        scaling: dict[str, Any] = {"rope_type": kind, "factor": metadata.get(f"{arch}.rope.scaling.factor")}
        original = metadata.get(f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = original
        out["rope_scaling"] = scaling
    rotary_dims = metadata.get(f"{arch}.rope.dimension_count")
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if heads and "hidden_size" in config else 0)
    if rotary_dims and head_dim and rotary_dims != head_dim:
        out["partial_rotary_factor"] = rotary_dims / head_dim
    return out

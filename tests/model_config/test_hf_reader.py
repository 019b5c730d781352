"""from_hf_config: one reading of config.json for the engine and the simulator alike."""

from __future__ import annotations

import pytest

from batchserve.model_config import ModelConfigError, from_hf_config
from batchserve.sim.models import HF_CONFIGS

LLAMA31_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}
# meta-llama/Llama-3.1-8B-Instruct as transformers 4.x wrote it (trimmed)
LLAMA31_V4 = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": LLAMA31_SCALING, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
}
# the same model as transformers 5.x writes it: theta inside rope_parameters, "dtype"
LLAMA31_V5 = {
    **{k: v for k, v in LLAMA31_V4.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")},
    "rope_parameters": {**LLAMA31_SCALING, "rope_theta": 500000.0}, "dtype": "bfloat16", "head_dim": 128,
}
QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "sliding_window": 32768,
    "use_sliding_window": False, "max_window_layers": 21, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
}


def test_v4_and_v5_layouts_parse_to_the_same_config():
    v4, v5 = from_hf_config(LLAMA31_V4, name="l"), from_hf_config(LLAMA31_V5, name="l")
    assert v4 == v5
    assert v4.rope_theta == 500000.0 and v4.rope_scaling == LLAMA31_SCALING
    assert v4.head_dim == 128 and v4.dtype == "bfloat16" and v4.max_model_len == 131072
    assert v4.eos_token_ids == (128001, 128008, 128009) and v4.bos_token_id == 128000


def test_generation_config_eos_wins():
    config = from_hf_config({**LLAMA31_V4, "eos_token_id": 128001}, generation_config={"eos_token_id": [128009, 1]})
    assert config.eos_token_ids == (128009, 1)
    assert from_hf_config({**LLAMA31_V4, "eos_token_id": 2}).eos_token_ids == (2,)


def test_legacy_type_key_is_normalised():
    linear = from_hf_config({**LLAMA31_V4, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert from_hf_config({**LLAMA31_V4, "rope_scaling": None}).rope_scaling is None


def test_qwen2_has_qkv_bias_but_no_output_bias_and_no_window():
    config = from_hf_config(QWEN2)
    assert config.attention_bias and not config.o_proj_bias and not config.qk_norm
    assert config.tie_word_embeddings and config.sliding_window is None and config.head_dim == 64


def test_llama_attention_bias_covers_the_output_projection():
    config = from_hf_config({**LLAMA31_V4, "attention_bias": True, "mlp_bias": True})
    assert config.attention_bias and config.o_proj_bias and config.mlp_bias


def test_qwen3_explicit_head_dim_and_qk_norm():
    qwen3 = {**QWEN2, "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "attention_bias": False}
    config = from_hf_config(qwen3)
    assert config.head_dim == 128 and config.q_size == 2048 and config.qk_norm
    assert not config.attention_bias and not config.o_proj_bias


def test_sliding_window():
    mistral = {**LLAMA31_V4, "architectures": ["MistralForCausalLM"], "rope_scaling": None, "sliding_window": 4096}
    assert from_hf_config(mistral).sliding_window == 4096
    assert from_hf_config({**mistral, "sliding_window": None}).sliding_window is None
    qwen = {**QWEN2, "use_sliding_window": True, "sliding_window": 4096}
    assert from_hf_config({**qwen, "max_window_layers": 0}).sliding_window == 4096
    with pytest.raises(ModelConfigError, match="some layers only"):
        from_hf_config(qwen)  # layers 21.. slide, 0..20 do not


def test_model_type_stands_in_for_missing_architectures():
    config = {k: v for k, v in QWEN2.items() if k != "architectures"}
    assert from_hf_config({**config, "model_type": "qwen2"}).architecture == "Qwen2ForCausalLM"


def test_multimodal_file_reads_its_text_config():
    outer = {"architectures": ["Qwen2VLForConditionalGeneration"], "text_config": QWEN2}
    config = from_hf_config(outer, name="vl")
    assert config.architecture == "Qwen2VLForConditionalGeneration" and config.hidden_size == 896


def test_defaults_when_optional_fields_absent() -> None:
    cfg = {"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2,
           "num_attention_heads": 8, "vocab_size": 1000, "max_position_embeddings": 256}
    m = from_hf_config(cfg, name="tiny")
    assert m.num_kv_heads == 8 and m.head_dim == 64 and not m.tie_word_embeddings and not m.is_moe
    assert m.dtype == "float32" and m.rope_theta == 10000.0 and m.hidden_act == "silu"


def test_qwen_moe_uses_expert_width() -> None:
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 6144,
           "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
           "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
           "vocab_size": 151936, "max_position_embeddings": 40960}
    m = from_hf_config(cfg, name="qwen3-30b-a3b")
    assert m.intermediate_size == 768 and m.num_experts == 128 and m.q_size == 4096 and m.qk_norm
    assert m.num_params() == 30_532_122_624  # published Qwen3-30B-A3B total


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"])
def test_missing_field_names_field_and_source(field: str) -> None:
    cfg = dict(HF_CONFIGS["llama-2-7b"])
    del cfg[field]
    with pytest.raises(ModelConfigError, match=f"my-model.*missing required field '{field}'"):
        from_hf_config(cfg, name="my-model")


@pytest.mark.parametrize("change, message", [
    ({"num_key_value_heads": "eight"}, "field 'num_key_value_heads' must be int"),
    ({"num_key_value_heads": 5}, "not a multiple of num_kv_heads"),
    ({"rope_scaling": {"rope_type": "linear"}}, "rope type 'linear' needs factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs low_freq_factor, high_freq_factor"),
    ({"rope_scaling": "yarn"}, "rope_parameters must be an object"),
])
def test_bad_values_are_errors(change, message) -> None:
    with pytest.raises(ModelConfigError, match=message):
        from_hf_config({**HF_CONFIGS["llama-2-7b"], **change}, name="x")


def test_moe_without_top_k_is_error() -> None:
    cfg = dict(HF_CONFIGS["mixtral-8x7b"])
    del cfg["num_experts_per_tok"]
    with pytest.raises(ModelConfigError, match="num_experts_per_tok"):
        from_hf_config(cfg, name="mixtral")


def test_not_an_object_is_error() -> None:
    with pytest.raises(ModelConfigError, match="must be a JSON object, got list"):
        from_hf_config([], name="x")

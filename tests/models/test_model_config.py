"""ModelConfig.from_hf reads both transformers 4.x and 5.x config.json layouts."""

from __future__ import annotations

import pytest

from batchserve.models import SUPPORTED_ARCHITECTURES, ModelConfig, ModelLoadError

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


def test_v4_and_v5_layouts_parse_to_the_same_config():
    v4, v5 = ModelConfig.from_hf(LLAMA31_V4), ModelConfig.from_hf(LLAMA31_V5)
    assert v4 == v5
    assert v4.rope_theta == 500000.0 and v4.rope_scaling == LLAMA31_SCALING
    assert v4.head_dim == 128 and v4.dtype == "bfloat16" and v4.max_model_len == 131072
    assert v4.eos_token_ids == (128001, 128008, 128009) and v4.bos_token_id == 128000


def test_generation_config_eos_wins():
    config = ModelConfig.from_hf({**LLAMA31_V4, "eos_token_id": 128001}, {"eos_token_id": [128009, 128001]})
    assert config.eos_token_ids == (128009, 128001)
    assert ModelConfig.from_hf({**LLAMA31_V4, "eos_token_id": 2}).eos_token_ids == (2,)


def test_legacy_type_key_and_context_extension():
    linear = ModelConfig.from_hf({**LLAMA31_V4, "max_position_embeddings": 4096,
                                  "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 4.0} and linear.max_model_len == 16384
    plain = ModelConfig.from_hf({**LLAMA31_V4, "rope_scaling": None})
    assert plain.rope_scaling is None and plain.max_model_len == 131072


QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "sliding_window": 32768,
    "use_sliding_window": False, "max_window_layers": 21, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
}


def test_qwen2_has_qkv_bias_but_no_output_bias_and_no_window():
    config = ModelConfig.from_hf(QWEN2)
    assert config.attention_bias and not config.o_proj_bias and not config.qk_norm
    assert config.tie_word_embeddings and config.sliding_window is None and config.head_dim == 64


def test_qwen2_yarn_extends_the_context():
    config = ModelConfig.from_hf({**QWEN2, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 32768}})
    assert config.rope_scaling["rope_type"] == "yarn" and config.max_model_len == 131072


def test_qwen3_explicit_head_dim_and_qk_norm():
    qwen3 = {**QWEN2, "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "attention_bias": False}
    config = ModelConfig.from_hf(qwen3)
    assert config.head_dim == 128 and config.q_size == 2048 and config.qk_norm
    assert not config.attention_bias and not config.o_proj_bias


def test_mistral_sliding_window():
    mistral = {**LLAMA31_V4, "architectures": ["MistralForCausalLM"], "rope_scaling": None, "sliding_window": 4096}
    assert ModelConfig.from_hf(mistral).sliding_window == 4096
    assert ModelConfig.from_hf({**mistral, "sliding_window": None}).sliding_window is None


def test_model_type_stands_in_for_missing_architectures():
    config = {k: v for k, v in QWEN2.items() if k != "architectures"}
    assert ModelConfig.from_hf({**config, "model_type": "qwen2"}).architecture == "Qwen2ForCausalLM"


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture GPT2LMHeadModel; supported: "
                                             + ", ".join(SUPPORTED_ARCHITECTURES)),
    ({"torch_dtype": "int8"}, "dtype 'int8' is not supported"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}}, "rope type 'longrope' is not supported"),
    ({"rope_scaling": {"rope_type": "linear"}}, "needs factor"),
    ({"hidden_size": None}, "missing required field 'hidden_size'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_key_value_heads": 5}, "not a multiple"),
])
def test_bad_configs_raise_clear_errors(change, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")):
        ModelConfig.from_hf({**LLAMA31_V4, **change})

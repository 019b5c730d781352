"""load_model_config: the shared reader plus what the torch engine refuses to run."""

from __future__ import annotations

import pytest

from batchserve.model_config import ModelConfigError, from_hf_config
from batchserve.models import SUPPORTED_ARCHITECTURES, ModelLoadError, load_model_config

# meta-llama/Llama-3.1-8B-Instruct (trimmed)
LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
}


def test_a_supported_config_reads_as_the_shared_reader_reads_it():
    generation = {"eos_token_id": [128009]}
    assert load_model_config(LLAMA31, generation, name="l") == from_hf_config(LLAMA31, "l", generation)


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture GPT2LMHeadModel; supported: "
                                             + ", ".join(SUPPORTED_ARCHITECTURES)),
    ({"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 8, "num_experts_per_tok": 2},
     "unsupported architecture DeepseekV3ForCausalLM"),
    ({"architectures": ["MixtralForCausalLM"], "num_local_experts": 8, "num_experts_per_tok": 2,
      "scoring_func": "sigmoid"}, "MoE router scoring_func 'sigmoid' is not supported; supported: softmax"),
    ({"torch_dtype": "int8"}, "dtype 'int8' is not supported"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}}, "rope type 'longrope' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
])
def test_unsupported_configs_raise_clear_errors(change, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model_config({**LLAMA31, **change})


def test_an_architecture_of_another_family_is_named_before_its_fields():
    with pytest.raises(ModelLoadError, match="unsupported architecture GPT2LMHeadModel"):
        load_model_config({"architectures": ["GPT2LMHeadModel"], "n_embd": 768})


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "linear"}}, "needs factor"),
    ({"hidden_size": None}, "missing required field 'hidden_size'"),
    ({"num_key_value_heads": 5}, "not a multiple"),
    ({"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8, "num_experts_per_tok": 2,
      "decoder_sparse_step": 0}, "'decoder_sparse_step' must be an integer >= 1, got 0"),
    ({"architectures": ["Qwen2MoeForCausalLM"], "num_experts": 8, "num_experts_per_tok": 2,
      "mlp_only_layers": "1"}, "'mlp_only_layers' must be a list of layer indices"),
    ({"architectures": ["Qwen2MoeForCausalLM"], "num_experts": 8, "num_experts_per_tok": 2,
      "mlp_only_layers": [40]}, "layer indices in 0..31, got .40.$"),
])
def test_malformed_configs_raise_the_readers_errors(change, message):
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(")):
        load_model_config({**LLAMA31, **change})

"""ModelConfig: validation and the parameter counts that set the simulator's weight bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchserve.model_config import ModelConfig, ModelConfigError
from batchserve.sim.models import MODELS


def test_tied_embeddings_count_one_matrix():
    qwen = MODELS["qwen2.5-0.5b"]
    assert qwen.tie_word_embeddings
    untied = replace(qwen, tie_word_embeddings=False)
    assert untied.num_params() - qwen.num_params() == qwen.vocab_size * qwen.hidden_size


def test_biases_and_qk_norm_are_counted():
    llama = MODELS["llama-3.1-8b"]
    h, inter, layers = llama.hidden_size, llama.intermediate_size, llama.num_layers
    qkv_bias = llama.q_size + 2 * llama.kv_size
    assert replace(llama, attention_bias=True).num_params() - llama.num_params() == layers * qkv_bias
    assert replace(llama, o_proj_bias=True).num_params() - llama.num_params() == layers * h
    assert replace(llama, mlp_bias=True).num_params() - llama.num_params() == layers * (2 * inter + h)
    assert replace(llama, qk_norm=True).num_params() - llama.num_params() == layers * 2 * llama.head_dim


def test_round_trips_through_a_dict():
    m = MODELS["llama-3.1-8b"]
    assert ModelConfig(**m.to_dict()) == m


@pytest.mark.parametrize("change, message", [
    ({"num_kv_heads": 5}, "not a multiple"),
    ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
    ({"num_experts": 8}, "num_experts_per_tok"),
    ({"num_experts_per_tok": 2}, "num_experts is 0"),
])
def test_invalid_shapes_are_refused(change, message):
    with pytest.raises(ModelConfigError, match=message):
        replace(MODELS["llama-3.1-8b"], **change)

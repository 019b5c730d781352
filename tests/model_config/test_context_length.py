"""max_model_len: one context-length rule with RoPE scaling, as vLLM derives it, for engine and simulator."""

from __future__ import annotations

import json

import pytest

from batchserve.model_config import from_hf_config, max_model_len
from batchserve.sim.models import HF_CONFIGS, get_model

# Qwen/Qwen2.5-7B-Instruct with the YaRN block its model card says to add for 128K.
QWEN25_7B_YARN = {**HF_CONFIGS["qwen2.5-7b"],
                  "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}}
# Qwen/Qwen3-8B with the YaRN block of its model card: max_position_embeddings (40960) is not the base.
QWEN3_8B_YARN = {**HF_CONFIGS["qwen3-8b"],
                 "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
LLAMA2_LINEAR = {**HF_CONFIGS["llama-2-7b"], "rope_scaling": {"type": "linear", "factor": 2.0}}
LLAMA2_DYNAMIC = {**HF_CONFIGS["llama-2-7b"], "rope_scaling": {"type": "dynamic", "factor": 2.0}}
LLAMA31_8B = HF_CONFIGS["llama-3.1-8b"]  # llama3 x8 over 8192; the file already says 131072
LLAMA2_PLAIN = HF_CONFIGS["llama-2-7b"]

CASES = [
    pytest.param(QWEN25_7B_YARN, 131072, id="yarn-qwen2.5-7b"),
    pytest.param(QWEN3_8B_YARN, 131072, id="yarn-qwen3-8b"),
    pytest.param(LLAMA2_LINEAR, 8192, id="linear-llama-2"),
    pytest.param(LLAMA2_DYNAMIC, 8192, id="dynamic-llama-2"),
    pytest.param(LLAMA31_8B, 131072, id="llama3-llama-3.1-8b"),
    pytest.param(LLAMA2_PLAIN, 4096, id="none-llama-2"),
]


@pytest.mark.parametrize("config, expected", CASES)
def test_rope_scaling_sets_the_context(config, expected):
    assert from_hf_config(config, name="m").max_model_len == expected


@pytest.mark.parametrize("config, expected", CASES)
def test_engine_and_simulator_agree(config, expected, tmp_path):
    pytest.importorskip("torch")
    from batchserve.models.config import load_model_config

    (tmp_path / "config.json").write_text(json.dumps(config))
    simulated = get_model(str(tmp_path))
    engine = load_model_config(config, name=simulated.name)
    assert engine.max_model_len == simulated.max_model_len == expected
    assert engine == simulated


def test_longrope_serves_the_original_length_by_default():
    # microsoft/Phi-3-mini-128k-instruct (trimmed): vLLM defaults to the short, original context.
    phi3 = {**LLAMA2_PLAIN, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}
    assert from_hf_config(phi3).max_model_len == 4096
    no_original = {k: v for k, v in phi3.items() if k != "original_max_position_embeddings"}
    assert from_hf_config(no_original).max_model_len == 131072


def test_rule_without_a_config():
    assert max_model_len(4096, None) == 4096
    assert max_model_len(4096, {"rope_type": "linear", "factor": 4.0}) == 16384
    assert max_model_len(40960, {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}) == 8192
    assert max_model_len(131072, {"rope_type": "llama3", "factor": 8.0}) == 131072
    assert max_model_len(2048, {"rope_type": "mrope"}) == 2048  # an unknown type without a factor changes nothing


def test_yarn_without_original_scales_max_position_embeddings():
    config = {**LLAMA2_PLAIN, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    parsed = from_hf_config(config)
    assert parsed.rope_scaling["original_max_position_embeddings"] == 4096 and parsed.max_model_len == 16384

"""CausalLM over a paged KV cache matches transformers, logit for logit, for every supported architecture.

The MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE) run the same checks: 8 experts, top-2, random weights.

Each sequence is compared with transformers running that sequence alone; ours
runs several sequences packed into one flat batch over scattered blocks.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from batchserve.models import load_model

ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"]
TOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batched_prefill_and_decode_match_transformers(architecture, hf_checkpoint, prefill_then_decode):
    hf, path = hf_checkpoint(architecture)
    model, config, where = load_model(path)
    assert config.architecture == architecture and where == path
    prefill_then_decode(hf, model)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_chunked_prefill_mixed_with_decodes_matches_transformers(architecture, hf_checkpoint, paged_runner,
                                                                 hf_logits, random_tokens):
    hf, path = hf_checkpoint(architecture)
    model, config, _ = load_model(path)
    runner = paged_runner(model, block_size=4, seed=1)
    prompt = random_tokens(23, config.vocab_size, seed=7)
    other = random_tokens(6, config.vocab_size, seed=8)
    # chunks of 5 + 5 + 13; the other sequence prefills, then decodes in the same steps
    first, other_out = runner.step([("chunked", prompt[:5]), ("other", other)])
    other_out, second = runner.step([("other", [int(other_out[-1].argmax())]), ("chunked", prompt[5:10])])
    third, other_out = runner.step([("chunked", prompt[10:]), ("other", [int(other_out[-1].argmax())])])
    reference = hf_logits(hf, prompt)
    assert max_diff(third[-1], reference[-1]) < TOL
    assert max_diff(torch.cat([first, second, third]), reference) < TOL
    assert max_diff(other_out, hf_logits(hf, runner.tokens["other"])[-1:]) < TOL


def test_prefix_cache_hit_reuses_shared_blocks(hf_checkpoint, paged_runner, hf_logits, random_tokens):
    hf, path = hf_checkpoint("LlamaForCausalLM")
    model, config, _ = load_model(path)
    runner = paged_runner(model, block_size=4, seed=2)
    shared = random_tokens(8, config.vocab_size, seed=1)
    runner.step([("a", shared + random_tokens(5, config.vocab_size, seed=2))])
    runner.share_prefix("b", "a", 8)  # b's first two blocks are a's, already filled
    suffix = random_tokens(6, config.vocab_size, seed=3)
    (out,) = runner.step([("b", suffix)])
    assert runner.block_tables["b"][:2] == runner.block_tables["a"][:2]
    assert max_diff(out, hf_logits(hf, shared + suffix)[8:]) < TOL


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
], ids=lambda r: r["rope_type"])
def test_rope_scaling_matches_transformers(rope, hf_checkpoint, prefill_then_decode):
    # the trained length is 16 where the recipe names one, so the 33-38 token sequences reach the scaled range
    hf, path = hf_checkpoint("LlamaForCausalLM", max_position_embeddings=64,
                             rope_parameters={**rope, "rope_theta": 10000.0})
    model, config, _ = load_model(path)
    assert config.rope_scaling["rope_type"] == rope["rope_type"]
    prefill_then_decode(hf, model)


def test_dynamic_ntk_matches_transformers_decoding_token_by_token(hf_checkpoint, paged_runner, random_tokens):
    """Past the trained length, position p uses the NTK base for length p + 1, as HF's cached decode does."""
    trained = 16
    hf, path = hf_checkpoint("LlamaForCausalLM", max_position_embeddings=trained,
                             rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    model, config, _ = load_model(path)
    assert config.max_model_len == 2 * trained
    tokens = random_tokens(26, config.vocab_size, seed=5)
    (ours,) = paged_runner(model).step([(0, tokens)])
    prompt = 10
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)  # filled in place by each call
    cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"  # 5.x vs 4.x
    with torch.no_grad():
        reference = [hf(torch.tensor([tokens[:prompt]]), use_cache=True, **{cache_arg: cache}).logits[0]]
        for token in tokens[prompt:]:
            reference.append(hf(torch.tensor([[token]]), use_cache=True, **{cache_arg: cache}).logits[0])
    assert max_diff(ours, torch.cat(reference)) < TOL


def test_mistral_sliding_window_matches_transformers(hf_checkpoint, prefill_then_decode):
    hf, path = hf_checkpoint("MistralForCausalLM", sliding_window=8)
    model, config, _ = load_model(path)
    assert config.sliding_window == 8
    prefill_then_decode(hf, model)


def test_llama_with_attention_and_mlp_bias_matches_transformers(hf_checkpoint, prefill_then_decode):
    hf, path = hf_checkpoint("LlamaForCausalLM", attention_bias=True, mlp_bias=True)
    model, config, _ = load_model(path)
    assert config.attention_bias and config.o_proj_bias and config.mlp_bias
    prefill_then_decode(hf, model, lengths=(7, 19), steps=2)

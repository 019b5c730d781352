"""GGUF weights: llama.cpp's names and q/k row order undone, and files the loader must refuse by name."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

from gguf_files import llama_cpp_permute, write_gguf, write_hf_model_as_gguf  # noqa: E402

from batchserve.gguf_file import GGUFError  # noqa: E402
from batchserve.model_config import ModelConfigError  # noqa: E402
from batchserve.models import load_model  # noqa: E402
from batchserve.models.gguf_weights import hf_name, unpermute_qk  # noqa: E402


@pytest.mark.parametrize("num_heads, head_dim", [(3, 8), (9, 64)])
def test_unpermute_undoes_the_converters_permutation(num_heads, head_dim):
    hf = np.random.default_rng(0).standard_normal((num_heads * head_dim, 5))
    gguf_rows = llama_cpp_permute(hf, num_heads)
    assert not np.array_equal(gguf_rows, hf)
    np.testing.assert_array_equal(unpermute_qk(gguf_rows, num_heads), hf)
    bias = hf[:, 0]
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(bias, num_heads), num_heads), bias)


@pytest.mark.parametrize("architecture, overrides", [
    ("LlamaForCausalLM", {}), ("Qwen2ForCausalLM", {}), ("Qwen3ForCausalLM", {}),
    # MoE: llama.cpp runs every layer of a qwen2moe file as MoE, renormalises Mixtral's and Qwen3-MoE's top-k
    ("MixtralForCausalLM", {}), ("Qwen2MoeForCausalLM", {"mlp_only_layers": []}), ("Qwen3MoeForCausalLM", {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_converted_hf_model_loads_with_the_same_logits(architecture, overrides, hf_checkpoint, hf_logits,
                                                         paged_runner, random_tokens, tmp_path):
    """F32 GGUF of a random HF model: names, q/k order (llama), biases and tied head (qwen2), q/k norms (qwen3),
    stacked experts, router and shared expert (MoE)."""
    hf, _ = hf_checkpoint(architecture, **overrides)
    model, config, _ = load_model(write_hf_model_as_gguf(hf, tmp_path / "m.gguf"))
    assert config.architecture == architecture and config.tie_word_embeddings == hf.config.tie_word_embeddings
    tokens = random_tokens(13, 300, seed=5)
    (out,) = paged_runner(model).step([(0, tokens)])
    assert (out - hf_logits(hf, tokens)).abs().max() < 1e-4


def test_q8_0_weights_dequantize_to_what_transformers_reads(hf_checkpoint, tmp_path):
    """Quantized blocks: our dequantized weights equal transformers' own GGUF loader on the same file."""
    transformers = pytest.importorskip("transformers")
    import torch

    hf, _ = hf_checkpoint("LlamaForCausalLM")
    path = write_hf_model_as_gguf(hf, tmp_path / "q8.gguf", tensor_type="Q8_0")
    ours, _, _ = load_model(path, prepack=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).state_dict()
    params = dict(ours.named_parameters())
    stacked = torch.cat([theirs[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(params["model.layers.1.self_attn.qkv_proj.weight"], stacked)
    assert torch.equal(params["model.layers.0.mlp.down_proj.weight"], theirs["model.layers.0.mlp.down_proj.weight"])
    original = hf.state_dict()["model.layers.1.self_attn.q_proj.weight"]
    assert 0 < (stacked[: original.shape[0]] - original).abs().max() < 0.05  # quantized, and close


def test_tensor_names_map_to_hf_names():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("blk.12.attn_k.bias") == "model.layers.12.self_attn.k_proj.bias"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("blk.0.attn_k_norm.weight") == "model.layers.0.self_attn.k_norm.weight"
    assert hf_name("rope_freqs.weight") == "rope_freqs.weight"  # unknown: load_weights names it as unexpected


def test_an_unsupported_tensor_type_is_named_with_the_supported_ones(tmp_path):
    path = write_gguf(tmp_path / "iq.gguf", tensor_type="IQ4_NL")
    with pytest.raises(GGUFError, match=r"unsupported tensor types: IQ4_NL \(2 tensors, e.g. token_embd.weight\)"
                                        r".*Supported: F32, .*Q4_K.*Q6_K"):
        load_model(path)


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path):
    path = write_gguf(tmp_path / "gemma.gguf", architecture="gemma3")
    with pytest.raises(ModelConfigError, match="architecture 'gemma3' is not supported; supported: llama, qwen2"):
        load_model(path)

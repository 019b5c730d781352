"""GGUF metadata (llama.cpp keys) to ModelConfig: the same description a config.json gives."""

from __future__ import annotations

import pytest

from batchserve.model_config import ModelConfigError, from_gguf_metadata, from_hf_config

LLAMA = {
    "general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 512,
    "llama.embedding_length": 64, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 500000.0,
    "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.dimension_count": 16,
    "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eot_token_id": 3,
    "tokenizer.ggml.tokens": ["x"] * 300, "general.file_type": 15,
}
TENSORS = ("token_embd.weight", "blk.0.attn_q.weight", "output.weight")


def test_llama_keys_read_like_the_equivalent_config_json():
    got = from_gguf_metadata(LLAMA, TENSORS, name="m")
    want = from_hf_config({
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "max_position_embeddings": 512,
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "vocab_size": 300, "bos_token_id": 1,
        "eos_token_id": [2, 3], "torch_dtype": "float32"}, name="m")
    assert got == want


def test_a_missing_output_tensor_means_tied_embeddings_and_biases_follow_the_tensors():
    got = from_gguf_metadata(LLAMA, ("token_embd.weight", "blk.0.attn_q.bias"))
    assert got.tie_word_embeddings and got.attention_bias


def test_qwen_keys_and_scaled_rope():
    meta = {k.replace("llama.", "qwen2."): v for k, v in LLAMA.items()} | {
        "general.architecture": "qwen2", "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
        "qwen2.rope.scaling.original_context_length": 128}
    got = from_gguf_metadata(meta, TENSORS)
    assert got.architecture == "Qwen2ForCausalLM" and got.attention_bias
    assert got.rope_scaling["rope_type"] == "yarn" and got.max_model_len == 512


def test_an_unknown_architecture_is_named():
    with pytest.raises(ModelConfigError, match="architecture 'gemma3' is not supported; supported: llama, qwen2"):
        from_gguf_metadata({"general.architecture": "gemma3"}, ())


def test_moe_keys():
    mixtral = from_gguf_metadata(LLAMA | {"llama.expert_count": 8, "llama.expert_used_count": 2}, TENSORS)
    assert mixtral.architecture == "MixtralForCausalLM" and mixtral.num_experts == 8
    assert mixtral.num_experts_per_tok == 2 and mixtral.intermediate_size == 128 and mixtral.norm_topk_prob
    qwen = {k.replace("llama.", "qwen2moe."): v for k, v in LLAMA.items()} | {
        "general.architecture": "qwen2moe", "qwen2moe.expert_count": 60, "qwen2moe.expert_used_count": 4,
        "qwen2moe.expert_feed_forward_length": 32, "qwen2moe.expert_shared_feed_forward_length": 256}
    got = from_gguf_metadata(qwen, TENSORS)
    assert got.architecture == "Qwen2MoeForCausalLM" and got.intermediate_size == 32
    assert got.shared_expert_intermediate_size == 256 and not got.norm_topk_prob and not got.dense_layers


def test_smollm2_reads_as_published(smollm2_gguf):
    """SmolLM2-135M-Instruct's published shape (its config.json on the HF Hub)."""
    pytest.importorskip("gguf")
    from batchserve.gguf_file import open_gguf

    c = open_gguf(smollm2_gguf).model_config()
    assert (c.architecture, c.num_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_kv_heads,
            c.head_dim, c.vocab_size, c.max_model_len, c.tie_word_embeddings, c.rope_theta, c.eos_token_ids,
            c.bos_token_id) == ("LlamaForCausalLM", 30, 576, 1536, 9, 3, 64, 49152, 8192, True, 100000.0, (2,), 1)
    assert c.rms_norm_eps == pytest.approx(1e-5)

"""GGUF weights: llama.cpp's names and q/k row order undone, and files the loader must refuse by name."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

from gguf_files import write_gguf  # noqa: E402

from batchserve.gguf_file import GGUFError  # noqa: E402
from batchserve.model_config import ModelConfigError  # noqa: E402
from batchserve.models import load_model  # noqa: E402
from batchserve.models.gguf_weights import hf_name, unpermute_qk  # noqa: E402


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's half-split RoPE rows to interleaved pairs."""
    return rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(
        rows.shape)


@pytest.mark.parametrize("num_heads, head_dim", [(3, 8), (9, 64)])
def test_unpermute_undoes_the_converters_permutation(num_heads, head_dim):
    hf = np.random.default_rng(0).standard_normal((num_heads * head_dim, 5))
    gguf_rows = llama_cpp_permute(hf, num_heads)
    assert not np.array_equal(gguf_rows, hf)
    np.testing.assert_array_equal(unpermute_qk(gguf_rows, num_heads), hf)
    bias = hf[:, 0]
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(bias, num_heads), num_heads), bias)


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

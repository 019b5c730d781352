"""quantization="gguf": 4-bit GGUF blocks decoded exactly and run by the int4 kernel, other types as int8."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf_files import write_hf_model_as_gguf

from batchserve.models import ModelLoadError, load_model
from batchserve.models.gguf_quantization import int4_blocks
from batchserve.models.quantization import Int4Linear, Int8Linear


def _random_blocks(kind: str, rows: int, cols: int) -> np.ndarray:
    """Random raw blocks of `kind` with finite fp16 block scales (random bytes there could be NaN)."""
    rng = np.random.default_rng(0)
    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    heads = {"Q4_0": 1, "Q4_1": 2, "Q4_K": 2}[kind]  # fp16 fields at the start of each block: d (, min / dmin)
    data[..., : 2 * heads] = rng.uniform(-0.1, 0.1, (rows, cols // block, heads)).astype(np.float16).view(np.uint8)
    return data.reshape(rows, -1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K"])
def test_4_bit_blocks_decode_to_what_gguf_dequantizes(kind):
    data = _random_blocks(kind, 16, 512)
    q, scales, lows = int4_blocks(data, kind)
    assert q.shape == (16, 512) and q.max() <= 15 and scales.shape == lows.shape == (16, 512 // 32)
    ours = q.reshape(16, -1, 32) * scales[..., None] + lows[..., None]
    expected = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind])
    np.testing.assert_allclose(ours.reshape(16, 512), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_a_q4_0_file_runs_int4_and_agrees_with_its_dequantized_weights(architecture, hf_checkpoint, paged_runner,
                                                                     random_tokens, tmp_path):
    """llama's permuted q/k rows are undone on the blocks too; only bfloat16 rounding separates the two."""
    hf, _ = hf_checkpoint(architecture)
    path = write_hf_model_as_gguf(hf, tmp_path / "q4.gguf", tensor_type="Q4_0")
    dequantized, _, _ = load_model(path)
    quantized, _, _ = load_model(path, quantization="gguf")
    layer = quantized.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, Int4Linear) and isinstance(layer.mlp.down_proj, Int4Linear)
    tokens = random_tokens(13, 300, seed=5)
    (expected,) = paged_runner(dequantized).step([(0, tokens)])
    (got,) = paged_runner(quantized).step([(0, tokens)])
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_q8_0_blocks_run_as_int8(hf_checkpoint, tmp_path):
    hf, _ = hf_checkpoint("LlamaForCausalLM")
    model, _, _ = load_model(write_hf_model_as_gguf(hf, tmp_path / "q8.gguf", tensor_type="Q8_0"),
                             quantization="gguf")
    assert isinstance(model.model.layers[0].self_attn.o_proj, Int8Linear)


def test_gguf_quantization_needs_a_gguf_file(hf_checkpoint):
    _, directory = hf_checkpoint("LlamaForCausalLM")
    with pytest.raises(ModelLoadError, match="quantization 'gguf' runs a GGUF file's own quantized weights"):
        load_model(directory, quantization="gguf")

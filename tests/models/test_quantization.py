"""Weight-only int8 and int4: the quantizers, the packed GEMMs, and their cost on a real model's predictions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from real_prompts import QUESTIONS

from batchserve.config import QuantizationConfig
from batchserve.models import ModelLoadError, load_model
from batchserve.models.linear import PackedLinear
from batchserve.models.quantization import Int4Linear, Int8Linear, quantize_per_channel, quantize_per_group
from batchserve.tokenizer import chat_prompt_ids, load_tokenizer


def test_per_channel_values_are_within_half_a_step_of_the_weight():
    w = torch.randn(48, 64) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different ranges
    w[7] = 0  # an all-zero row
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scales.shape == (48,)
    assert ((q.float() * scales[:, None] - w).abs() <= scales[:, None] / 2 + 1e-7).all()
    assert (q[7] == 0).all() and torch.isfinite(scales).all()


def test_int8_linear_computes_with_the_dequantized_weight():
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(96, 64, generator=g), torch.randn(96, generator=g), torch.randn(5, 64, generator=g)
    layer = Int8Linear(w, b)
    q, scales = quantize_per_channel(w)
    expected = F.linear(x.bfloat16().float(), q.float() * scales[:, None], b)  # activations enter as bfloat16
    got = layer(x)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=2e-2, atol=5e-2)
    assert layer(x[:0]).shape == (0, 96)  # an empty step


def test_a_compiled_one_row_int8_product_reduces_over_the_int8_rows():
    """Compiled, one row multiplies-and-reduces the plain int8 rows (no packed-kernel call in the graph's code),
    more rows call the kernel; both give the dequantized weight's product."""
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    layer = Int8Linear(w, b)
    q, scales = quantize_per_channel(w)
    compiled = torch.compile(layer, dynamic=True, fullgraph=True)
    for rows, kernel_call in ((1, False), (5, True)):
        x = torch.randn(rows, 64, generator=g)
        got, codes = run_and_get_code(compiled, x)
        assert ("_weight_int8pack_mm" in "".join(codes)) == kernel_call, rows
        expected = F.linear(x.bfloat16().float(), q.float() * scales[:, None], b)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_per_group_values_are_within_half_a_step_of_the_weight(group_size):
    w = torch.randn(32, 256) * torch.logspace(-3, 1, 32)[:, None]
    w[3] = 0.5  # a constant row
    q, scales, lows = quantize_per_group(w, group_size)
    assert q.dtype == torch.uint8 and q.max() <= 15 and scales.shape == lows.shape == (32, 256 // group_size)
    step = scales.repeat_interleave(group_size, dim=1)
    dequantized = q.float() * step + lows.repeat_interleave(group_size, dim=1)
    assert ((dequantized - w).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_linear_computes_with_the_dequantized_weight(group_size):
    """Closed form: x W^T + b with W = scale * Q + low, scales and offsets rounded to bfloat16 as the kernel takes them."""
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(96, 256, generator=g), torch.randn(96, generator=g), torch.randn(5, 256, generator=g)
    q, scales, lows = quantize_per_group(w, group_size)
    layer = Int4Linear(q, scales, lows, group_size, b)
    zeros = (lows + 8 * scales).bfloat16().float()  # the kernel's offset of (q - 8)
    weight = (q.float() - 8) * scales.bfloat16().float().repeat_interleave(group_size, 1) + zeros.repeat_interleave(
        group_size, 1)
    expected = F.linear(x.bfloat16().float(), weight, b)
    got = layer(x)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=2e-2, atol=5e-2)
    assert layer(x[:0]).shape == (0, 96)  # an empty step


def test_a_layer_the_int4_kernel_cannot_take_runs_int8():
    model, _, _ = load_model("tiny", quantization="int4")
    kinds = {type(m).__name__ for m in model.model.modules() if m.__class__.__name__.endswith("Linear")}
    assert "Int4Linear" in kinds and "Linear" not in kinds and "PackedLinear" not in kinds


@pytest.mark.parametrize("method, group_size, message", [
    ("int3", 32, "quantization 'int3' is not supported; use None or one of int8, int4, gguf"),
    ("int4", 48, "quantization group size 48 is not supported; use one of 32, 64, 128"),
])
def test_an_unknown_quantization_is_named(method, group_size, message):
    with pytest.raises(ValueError, match=message):
        QuantizationConfig(method, group_size)
    with pytest.raises(ModelLoadError, match="quantization 'int3' is not supported"):
        load_model("tiny", quantization="int3")


@pytest.fixture(scope="module")
def real_prompts(smollm2_gguf) -> list[list[int]]:
    tokenizer = load_tokenizer(smollm2_gguf)
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def unquantized_log_probs(smollm2_gguf, real_prompts, paged_runner) -> torch.Tensor:
    return _prompt_log_probs(load_model(smollm2_gguf)[0], real_prompts, paged_runner)


def _prompt_log_probs(model, prompts: list[list[int]], paged_runner) -> torch.Tensor:
    """Next-token log-probabilities at every position of the 20 prompts, run as one batch."""
    runner = paged_runner(model, block_size=16, num_blocks=sum(len(p) // 16 + 1 for p in prompts))
    return torch.cat(runner.step(list(enumerate(prompts)))).log_softmax(-1)


@pytest.mark.parametrize("method, quantize_lm_head, layer_type, max_kl", [
    ("int8", False, Int8Linear, 0.01),  # the default: measured 0.0074, argmax agreement 0.97
    # (int8 layers with the opt-in int8 head measured 0.0105, agreement 0.968: the head adds 0.003; of the
    # total, bfloat16 activations alone cost 0.0026. The head is checked below, beside int4 layers.)
    # SmolLM2's file is Q4_1 with blocks of 32: int4 in groups of 32 finds the same grid, so only bfloat16
    # rounding (and the opt-in int8 head) are left: measured 0.0013 (0.0032 with the int8 head). Groups of 64
    # measured 0.76 nats on it: the README warns. A 4-bit head measured 0.043 (agreement 0.86): it stays int8.
    ("int4", False, Int4Linear, 0.01),
    ("int4", True, Int4Linear, 0.01),
    ("gguf", False, Int4Linear, 0.01),  # the file's own blocks: measured 0.0013 (0.0032 with the int8 head)
])
def test_quantized_models_stay_close_to_the_unquantized_model(method, quantize_lm_head, layer_type, max_kl,
                                                              smollm2_gguf, real_prompts, unquantized_log_probs,
                                                              paged_runner):
    """Teacher-forced over 20 real chat prompts: mean next-token KL in nats, argmax agreement >= 95%."""
    model, _, _ = load_model(smollm2_gguf, quantization=QuantizationConfig(method, quantize_lm_head=quantize_lm_head))
    assert isinstance(model.model.layers[0].mlp.down_proj, layer_type)
    assert isinstance(model.lm_head, Int8Linear if quantize_lm_head else PackedLinear)
    assert model.model.embed_tokens.weight.dtype == torch.float32  # the lookup keeps the dtype
    log_p, log_q = unquantized_log_probs, _prompt_log_probs(model, real_prompts, paged_runner)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert kl.mean() < max_kl
    assert (log_p.argmax(-1) == log_q.argmax(-1)).float().mean() >= 0.95

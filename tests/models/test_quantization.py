"""Weight-only int8: per-channel quantization, the int8 GEMM, and its cost on a real model's predictions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from batchserve.models import ModelLoadError, load_model
from batchserve.models.quantization import Int8Linear, quantize_per_channel
from batchserve.tokenizer import chat_prompt_ids, load_tokenizer

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea.",
             "Who wrote Romeo and Juliet?", "Explain photosynthesis in one sentence.", "What is 12 times 12?"]


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


def test_an_unknown_quantization_is_named():
    with pytest.raises(ModelLoadError, match="quantization 'int4' is not supported; use None or one of int8"):
        load_model("tiny", quantization="int4")


def test_int8_stays_close_to_the_unquantized_model(smollm2_gguf, paged_runner):
    """Teacher-forced over real chat prompts: mean next-token KL < 0.01 nats, argmax agreement >= 90%."""
    tokenizer = load_tokenizer(smollm2_gguf)
    full, _, _ = load_model(smollm2_gguf)
    int8, _, _ = load_model(smollm2_gguf, quantization="int8")
    assert isinstance(int8.model.layers[0].mlp.down_proj, Int8Linear)
    kls, agree = [], []
    for question in QUESTIONS:
        ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": question}])
        (p,) = paged_runner(full, block_size=16, num_blocks=8).step([(0, ids)])
        (q,) = paged_runner(int8, block_size=16, num_blocks=8).step([(0, ids)])
        log_p, log_q = p.log_softmax(-1), q.log_softmax(-1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
        agree.append(p.argmax(-1) == q.argmax(-1))
    assert torch.cat(kls).mean() < 0.01  # measured 0.0075
    assert torch.cat(agree).float().mean() >= 0.9  # measured 0.97

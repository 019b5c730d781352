"""oneDNN weight prepacking: same products as F.linear, every projection swapped, same model output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchserve.models import load_model
from batchserve.models.linear import PackedLinear, prepack_supported

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not prepack_supported(torch.float32, CPU),
                                  reason="this torch build has no oneDNN linear for CPU")


@needs_onednn
@pytest.mark.parametrize("rows", [0, 1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear_fp32(rows, bias):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 80, generator=g)
    b = torch.randn(96, generator=g) if bias else None
    # a strided view, as chunked activations arrive
    x = torch.randn(rows, 160, generator=g)[:, ::2]
    got = PackedLinear(w, b)(x)
    assert got.shape == (rows, 96)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not prepack_supported(torch.bfloat16, CPU), reason="no oneDNN bf16 linear in this build")
def test_packed_linear_matches_f_linear_bf16():
    g = torch.Generator().manual_seed(0)
    w, b, x = (torch.randn(s, generator=g).bfloat16() for s in ((64, 48), (64,), (9, 48)))
    torch.testing.assert_close(PackedLinear(w, b)(x).float(), F.linear(x, w, b).float(), rtol=2e-2, atol=5e-2)


def test_only_cpu_float32_and_bfloat16_are_packed():
    assert not prepack_supported(torch.float16, CPU)
    assert not prepack_supported(torch.float32, torch.device("cuda"))
    model, _, _ = load_model("tiny", prepack=False)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert model.lm_head is not None and isinstance(model.lm_head, nn.Linear)


@needs_onednn
def test_prepacked_model_swaps_every_projection_and_keeps_its_logits(hf_checkpoint, paged_runner, random_tokens):
    # tied embeddings: the LM head becomes a packed copy while the lookup keeps the table
    _, path = hf_checkpoint("Qwen2ForCausalLM")
    plain, config, _ = load_model(path, prepack=False)
    packed, _, _ = load_model(path)
    assert not any(isinstance(m, nn.Linear) for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 4 * config.num_layers + 1  # qkv, o, gate_up, down; LM head
    chunks = [(n, random_tokens(n, config.vocab_size, seed=n)) for n in (5, 17, 33)]
    for got, want in zip(paged_runner(packed).step(chunks), paged_runner(plain).step(chunks), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_a_compiled_one_row_product_reduces_over_the_row_major_weight(dtype, tol):
    """With row_major, a compiled graph of one row runs the multiply-and-reduce (no oneDNN call in its code);
    a graph of more rows still calls the packed GEMM; both give F.linear's product."""
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 80, generator=g).to(dtype), torch.randn(96, generator=g).to(dtype)
    linear = PackedLinear(w, b, row_major=True)
    compiled = torch.compile(linear, dynamic=True, fullgraph=True)
    for rows, packed_call in ((1, False), (5, True)):
        x = torch.randn(rows, 80, generator=g).to(dtype)
        got, codes = run_and_get_code(compiled, x)
        assert ("packed_linear" in "".join(codes)) == packed_call, rows
        torch.testing.assert_close(got.float(), F.linear(x, w, b).float(), rtol=tol, atol=tol)
    assert PackedLinear(w, b).weight is None  # one copy unless asked


@needs_onednn
def test_row_major_copies_are_kept_only_where_half_the_free_memory_holds_them(monkeypatch, caplog):
    import os

    def kept(model) -> bool:
        layers = [m for m in model.model.modules() if isinstance(m, PackedLinear)]
        assert layers
        return all(m.weight is not None for m in layers)

    assert kept(load_model("tiny", row_major_gemv=True)[0])
    assert not kept(load_model("tiny")[0])
    pages = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}  # 40 KiB free: less than twice tiny's projections
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert not kept(load_model("tiny", row_major_gemv=True)[0])
    assert "row_major_gemv: skipped" in caplog.text and "half the free memory" in caplog.text

    def unknown(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(os, "sysconf", unknown)  # a system that does not say how much is free: kept
    assert kept(load_model("tiny", row_major_gemv=True)[0])

"""The built-in `tiny` model: same weights everywhere, a byte vocabulary, a working forward."""

from __future__ import annotations

import torch

from batchserve.models import build_tiny, load_model, tiny_config


def test_tiny_loads_by_name():
    model, config, path = load_model("tiny")
    assert path is None and config == tiny_config()
    assert config.vocab_size == 259 and config.bos_token_id == 256 and config.eos_token_ids == (257,)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_two_builds_have_identical_weights():
    a, b = build_tiny().state_dict(), build_tiny().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_are_pinned():
    """Seeded CPU generator: these numbers must not change between machines (or silently between releases)."""
    weights = build_tiny().state_dict()
    embed = weights["model.embed_tokens.weight"]
    assert embed.shape == (259, 64)
    assert torch.allclose(embed[0, :3], torch.tensor([-0.0225168, -0.0230472, -0.0050116]), atol=1e-6)
    assert abs(float(embed.std()) - 0.02) < 5e-4
    assert torch.equal(weights["model.norm.weight"], torch.ones(64))


def test_forward_produces_vocab_logits(paged_runner):
    model = build_tiny()
    prompt = [256] + list(b"hello, world")
    runner = paged_runner(model, block_size=16)
    (out,) = runner.step([(0, prompt)])
    assert out.shape == (len(prompt), 259) and torch.isfinite(out).all()
    (step,) = runner.step([(0, [int(out[-1].argmax())])])
    assert step.shape == (1, 259)
    (again,) = paged_runner(build_tiny(), block_size=16).step([(0, prompt)])
    assert torch.equal(out, again)

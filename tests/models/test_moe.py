"""MoE specifics against transformers: skewed routing, both expert layouts, the unpacked path, bad use.

The parity of the three families on ordinary random weights lives in
test_llama_parity.py; here the router is biased so that one expert takes every
token, or two experts take them all and six get none, and the logits must still
equal transformers'.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.config import QuantizationConfig
from batchserve.lora import LoRAConfig
from batchserve.lora.adapter import LoRAError
from batchserve.lora.manager import LoRAManager
from batchserve.models import ModelLoadError, load_model
from batchserve.models.linear import prepack_supported
from batchserve.models.moe import Experts, SparseMoeBlock
from batchserve.models.quantization import Int4Linear, Int8Linear, quantize_per_channel, quantize_per_group

MOE_ARCHITECTURES = ["MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"]
ANCHOR = 20.0  # hidden dimension 0 of every token, kept constant through the layers


@torch.no_grad()
def bias_router(hf: torch.nn.Module, favoured: dict[int, float]) -> None:
    """Make dimension 0 of every hidden state ANCHOR and steer routing by it: expert e's logit gains
    favoured[e] * (normed dimension 0), positive for every token, so the favoured experts win everywhere."""
    hf.model.embed_tokens.weight[:, 0] = ANCHOR
    for layer in hf.model.layers:
        layer.self_attn.o_proj.weight[0] = 0  # nothing writes dimension 0 back into the residual
        layer.post_attention_layernorm.weight[0] = 1.0
        for name, p in layer.mlp.named_parameters():
            if name.endswith("down_proj.weight"):
                p[0] = 0
            elif name == "experts.down_proj":
                p[:, 0] = 0
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            for expert, strength in favoured.items():
                gate.weight[expert, 0] = strength


def saved(hf: torch.nn.Module, path) -> str:
    hf.save_pretrained(path)
    return str(path)


def routed_experts(model) -> list[torch.Tensor]:
    """Record the top-k expert ids each MoE layer sees during the next forwards."""
    seen: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, Experts):
            module.register_forward_hook(lambda _m, args, _out: seen.append(args[2].clone()))
    return seen


@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_every_token_routed_to_one_expert_matches_transformers(architecture, tmp_path, make_hf_model,
                                                               prefill_then_decode):
    hf = make_hf_model(architecture)
    bias_router(hf, {3: 10.0})
    model, _, _ = load_model(saved(hf, tmp_path))
    seen = routed_experts(model)
    prefill_then_decode(hf, model, steps=3)
    assert seen and all(bool((ids == 3).any(dim=1).all()) for ids in seen)  # expert 3 in every token's top-k


@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_experts_without_tokens_match_transformers(architecture, tmp_path, make_hf_model, prefill_then_decode):
    hf = make_hf_model(architecture)
    bias_router(hf, {0: 10.0, 5: 10.0})  # equal strength: the two weights stay data-dependent
    model, _, _ = load_model(saved(hf, tmp_path))
    seen = routed_experts(model)
    prefill_then_decode(hf, model, steps=3)
    assert seen and all(set(ids.unique().tolist()) == {0, 5} for ids in seen)  # six experts got no token


@pytest.mark.parametrize("prepack", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("architecture", ["MixtralForCausalLM", "Qwen2MoeForCausalLM"])
def test_stacked_expert_checkpoint_loads(architecture, prepack, tmp_path, make_hf_model, prefill_then_decode):
    """transformers 5 keeps experts as 3-D `experts.gate_up_proj` / `experts.down_proj`; a file in that layout
    (here: the in-memory state dict) loads like the per-expert files save_pretrained writes."""
    from safetensors.torch import save_file

    hf = make_hf_model(architecture)
    state = hf.state_dict()
    assert any(name.endswith("experts.gate_up_proj") and t.dim() == 3 for name, t in state.items())
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    model, _, _ = load_model(tmp_path, prepack=prepack)
    prefill_then_decode(hf, model, lengths=(7, 19), steps=2)


@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_parameter_counts_equal_transformers(architecture, hf_checkpoint):
    hf, path = hf_checkpoint(architecture)
    _, config, _ = load_model(path)
    assert config.num_params() == sum(p.numel() for p in hf.parameters())
    expert = sum(p[0].numel() for n, p in hf.named_parameters()
                 if n.endswith((".experts.gate_up_proj", ".experts.down_proj"))) // config.num_moe_layers
    idle = (config.num_experts - config.num_experts_per_tok) * expert * config.num_moe_layers
    assert config.num_active_params() == config.num_params() - idle


def test_missing_expert_is_named(hf_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = hf_checkpoint("MixtralForCausalLM")
    state = load_file(path / "model.safetensors")
    del state["model.layers.1.block_sparse_moe.experts.6.w3.weight"]
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"missing weights \(1\): model.layers.1.mlp.experts.6.up_proj.weight"):
        load_model(tmp_path)


def test_gguf_quantization_and_lora_refuse_moe_models(hf_checkpoint, tmp_path):
    pytest.importorskip("gguf")
    from gguf_files import write_hf_model_as_gguf

    hf, path = hf_checkpoint("Qwen3MoeForCausalLM")
    with pytest.raises(ModelLoadError, match="quantization 'gguf' is not supported for MoE models"):
        load_model(write_hf_model_as_gguf(hf, tmp_path / "m.gguf"), quantization="gguf")
    model, config, _ = load_model(path)
    with pytest.raises(LoRAError, match="LoRA adapters on MoE models"):
        LoRAManager(model, config, LoRAConfig(enable_lora=True))


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(0, 12), top_k=st.integers(1, 4), seed=st.integers(0, 2**16), packed=st.booleans())
def test_grouped_dispatch_equals_each_token_through_its_experts(tokens, top_k, seed, packed):
    """Any routing (empty batch, experts without tokens, every token on the same experts): the grouped GEMMs
    equal running each token through each of its experts alone."""
    g = torch.Generator().manual_seed(seed)
    num_experts, hidden, width = 6, 8, 5
    experts = Experts(num_experts, hidden, width, torch.float32, "cpu")
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(experts.gate_up_proj.shape, generator=g))
        experts.down_proj.copy_(torch.randn(experts.down_proj.shape, generator=g))
    gate_up, down = experts.gate_up_proj.detach().clone(), experts.down_proj.detach().clone()
    if packed and prepack_supported(torch.float32, torch.device("cpu")):
        experts.prepack()
    x = torch.randn(tokens, hidden, generator=g)
    ids = torch.rand(tokens, num_experts, generator=g).argsort(dim=1)[:, :top_k]  # distinct experts per token
    weights = torch.rand(tokens, top_k, generator=g)
    want = torch.zeros(tokens, hidden)
    for t in range(tokens):
        for j in range(top_k):
            e = int(ids[t, j])
            gate, up = (gate_up[e] @ x[t]).chunk(2)
            want[t] += weights[t, j] * (down[e] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(experts(x, weights, ids), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", MOE_ARCHITECTURES)
def test_bfloat16_experts_are_as_accurate_as_transformers_bfloat16(architecture, hf_checkpoint, paged_runner,
                                                                    hf_logits, random_tokens):
    """dtype bfloat16 packs the experts for oneDNN's bf16 GEMM (half the weight bytes, fp32 accumulation): its
    logits stay as close to the fp32 model's as transformers' own bf16 run does."""
    hf, path = hf_checkpoint(architecture)
    model, _, _ = load_model(path, dtype="bfloat16")
    packed = [m for m in model.modules() if isinstance(m, Experts)]
    assert packed and all(m.packed is not None for m in packed) == prepack_supported(torch.bfloat16, model.device)
    prompt = random_tokens(33, model.config.vocab_size, 1)
    ours = paged_runner(model).step([(0, prompt)])[0].float()
    reference = hf_logits(hf, prompt)
    theirs = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), prompt)
    assert float((ours - reference).abs().mean()) < 2 * float((theirs - reference).abs().mean())


def _dequantized(weight: torch.Tensor, method: str) -> torch.Tensor:
    if method == "int8":
        q, scales = quantize_per_channel(weight)
        return q.float() * scales[:, None]
    q, scales, lows = quantize_per_group(weight, 32)
    return (q.float().reshape(*scales.shape, 32) * scales[..., None] + lows[..., None]).reshape(weight.shape)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_experts_compute_with_their_dequantized_weights(method):
    """Each expert's gate/up and down run the quantized product: the layer equals float experts holding the
    dequantized weights, up to the bfloat16 activations the low-bit kernels take."""
    g = torch.Generator().manual_seed(0)
    quantized, reference = (Experts(4, 64, 32, torch.float32, "cpu") for _ in range(2))
    with torch.no_grad():
        for name in ("gate_up_proj", "down_proj"):
            w = torch.randn(getattr(quantized, name).shape, generator=g) / 8
            getattr(quantized, name).copy_(w)
            getattr(reference, name).copy_(torch.stack([_dequantized(m, method) for m in w]))
    quantized.quantize(QuantizationConfig(method))
    layer_type = Int8Linear if method == "int8" else Int4Linear
    assert len(quantized.packed) == 8 and all(isinstance(p, layer_type) for p in quantized.packed)
    x = torch.randn(9, 64, generator=g)
    ids = torch.rand(9, 4, generator=g).argsort(dim=1)[:, :2]
    weights = torch.rand(9, 2, generator=g)
    torch.testing.assert_close(quantized(x, weights, ids), reference(x, weights, ids), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("architecture", ["MixtralForCausalLM", "Qwen2MoeForCausalLM"])
def test_int8_experts_cost_about_what_bfloat16_rounding_costs(architecture, hf_checkpoint, paged_runner,
                                                               random_tokens):
    """int8 experts (bfloat16 activations), the routers kept in float; teacher-forced over 8 random prompts: the
    mean next-token KL to the float32 model stays within 3x that of running the whole model in bfloat16
    (measured 2.0x Mixtral, 1.2x Qwen2-MoE), argmax agreement >= 90%."""
    _, path = hf_checkpoint(architecture)
    model, _, _ = load_model(path, quantization="int8")
    assert not any(isinstance(m.gate, Int8Linear) for m in model.modules() if isinstance(m, SparseMoeBlock))
    prompts = [random_tokens(12 + 5 * i, model.config.vocab_size, i) for i in range(8)]

    def log_probs(m) -> torch.Tensor:
        return torch.cat(paged_runner(m).step(list(enumerate(prompts)))).float().log_softmax(-1)

    def kl(log_q: torch.Tensor) -> float:
        return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())

    log_p, log_q = log_probs(load_model(path)[0]), log_probs(model)
    assert kl(log_q) < 3 * kl(log_probs(load_model(path, dtype="bfloat16")[0]))
    assert (log_p.argmax(-1) == log_q.argmax(-1)).float().mean() >= 0.9

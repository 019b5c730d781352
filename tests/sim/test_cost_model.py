"""Roofline cost model and deployment sizing, checked against hand-derived rooflines."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from batchserve.model_config import from_hf_config
from batchserve.sim.cost_model import CostModel, Efficiency, StepShape
from batchserve.sim.deployment import WEIGHT_BYTES, Deployment, DoesNotFitError, GiB
from batchserve.sim.hardware import get_hardware
from batchserve.sim.models import get_model

EFF = Efficiency()
H100 = get_hardware("h100-sxm")
LLAMA_8B = get_model("llama-3.1-8b")


def cost_model(model: str = "llama-3.1-8b", hardware: str = "h100-sxm", **deployment) -> CostModel:
    return CostModel(Deployment(model=get_model(model), hardware=get_hardware(hardware), **deployment), EFF)


def decode_step(cm: CostModel, batch: int = 1, context_per_request: int = 512) -> float:
    return cm.step_time(num_decodes=batch, decode_context_tokens=batch * context_per_request, num_sampling=batch)


def prefill_step(cm: CostModel, tokens: int) -> float:
    """One whole prompt of `tokens` tokens from an empty cache, sampling its first token."""
    return cm.step_time(num_prefill_tokens=tokens, prefill_attended_pairs=tokens * (tokens + 1) / 2,
                        prefill_context_tokens=tokens, num_sampling=1)


def bandwidth(hw=H100) -> float:
    return hw.memory_bandwidth * EFF.memory_bandwidth


def gemm_flops_per_s(hw=H100, dtype: str = "bf16") -> float:
    return hw.peak_flops[dtype] * EFF.gemm_flops


def linear_params(model) -> int:
    """Parameters in the layers' GEMMs (everything but embeddings, LM head and norms)."""
    embed = model.vocab_size * model.hidden_size
    h, q, kv = model.hidden_size, model.num_attention_heads * model.head_dim, model.num_kv_heads * model.head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * model.intermediate_size
    assert model.num_params() - per_layer * model.num_layers - 2 * embed < 0.001 * model.num_params()  # norms only
    return per_layer * model.num_layers


# ---------------------------------------------------------------------------- decode: memory-bound


def test_batch1_decode_is_memory_bound() -> None:
    """At batch 1 reading the weights dominates: GEMM FLOP time is ~1% of the byte time, and a second
    request in the batch costs almost nothing."""
    cm = cost_model()
    flop_time = 2 * LLAMA_8B.num_params() / gemm_flops_per_s()
    byte_time = LLAMA_8B.num_params() * 2 / bandwidth()
    assert flop_time < 0.02 * byte_time
    assert decode_step(cm, batch=2) / decode_step(cm, batch=1) < 1.01
    assert cm.layer_gemm_time(1) == pytest.approx(cm.layer_gemm_time(2), rel=0.01)


def test_batch1_decode_time_is_weight_bytes_over_bandwidth() -> None:
    cm = cost_model()
    d = cm.deployment
    t = decode_step(cm, batch=1, context_per_request=512)
    # The brief's roofline: all weight bytes streamed once, plus the fixed step overhead.
    assert t == pytest.approx(d.weight_bytes_per_gpu() / bandwidth() + EFF.step_overhead_s, rel=0.10)
    # Tighter: the input embedding is a gather (not streamed); the LM head and 512 tokens of KV are.
    embed_bytes = LLAMA_8B.vocab_size * LLAMA_8B.hidden_size * 2
    kv_bytes = 512 * 2 * LLAMA_8B.num_layers * LLAMA_8B.num_kv_heads * LLAMA_8B.head_dim * 2
    streamed = d.weight_bytes_per_gpu() - embed_bytes + kv_bytes
    assert t == pytest.approx(streamed / bandwidth() + EFF.step_overhead_s, rel=0.02)


def test_decode_time_grows_with_context_through_kv_reads() -> None:
    cm = cost_model()
    kv_bytes_per_token = 2 * LLAMA_8B.num_layers * LLAMA_8B.num_kv_heads * LLAMA_8B.head_dim * 2
    extra = decode_step(cm, 32, 4096) - decode_step(cm, 32, 512)
    assert extra == pytest.approx(32 * (4096 - 512) * kv_bytes_per_token / bandwidth(), rel=0.02)


def test_kv_reads_cost_their_bytes_at_the_kv_bandwidth_ratio() -> None:
    """A CPU's K/V gather: each decode key (and each cached context token of a chunk) costs its bytes at
    `kv_bandwidth_ratio` x the weights' bandwidth, nothing else changes."""
    eff = Efficiency(kv_bandwidth_ratio=0.25)
    cm = CostModel(Deployment(model=LLAMA_8B, hardware=H100), eff)
    kv_bytes_per_token = 2 * LLAMA_8B.num_layers * LLAMA_8B.num_kv_heads * LLAMA_8B.head_dim * 2
    extra = decode_step(cm, 32, 4096) - decode_step(cm, 32, 512)
    assert extra == pytest.approx(32 * (4096 - 512) * kv_bytes_per_token / (0.25 * bandwidth()), rel=0.02)
    assert decode_step(cm, 32, 1) - decode_step(cost_model(), 32, 1) < 0.01 * decode_step(cm, 32, 1)

    def chunk(model: CostModel, context: int) -> float:
        return model.step_time(num_prefill_tokens=16, prefill_attended_pairs=16 * (context + 17 / 2),
                               prefill_context_tokens=context + 16, num_sampling=1)

    extra = chunk(cm, 8192) - chunk(cm, 1024)
    assert extra == pytest.approx((8192 - 1024) * kv_bytes_per_token / (0.25 * bandwidth()), rel=0.02)
    with pytest.raises(ValueError, match="kv_bandwidth_ratio"):
        Efficiency(kv_bandwidth_ratio=0)


def test_keys_another_row_read_cost_their_bytes_at_the_shared_ratio() -> None:
    """Rows sharing a cached prefix: the keys a row reads from blocks an earlier row of the step read cost
    their bytes at `kv_shared_bandwidth_ratio` x the other keys' rate; the rest of the step is unchanged."""
    eff = Efficiency(kv_bandwidth_ratio=0.25, kv_shared_bandwidth_ratio=4.0)
    cm = CostModel(Deployment(model=LLAMA_8B, hardware=H100), eff)
    kv_bytes_per_token = 2 * LLAMA_8B.num_layers * LLAMA_8B.num_kv_heads * LLAMA_8B.head_dim * 2
    keys, shared = 32 * 4096, 31 * 2048  # 32 rows, a 2,048-token prefix all of them hold

    def step(shared_keys: int) -> float:
        return cm.step_time(num_decodes=32, decode_context_tokens=keys, num_sampling=32, decode_key_tokens=keys,
                            decode_shared_key_tokens=shared_keys)

    saved = step(0) - step(shared)
    assert saved == pytest.approx(shared * kv_bytes_per_token / (0.25 * bandwidth()) * (1 - 1 / 4.0), rel=1e-6)
    offsets = cm.decode_run_offsets(32, np.array([keys, keys]), shared_key_tokens=shared)
    assert offsets == pytest.approx([step(shared), 2 * step(shared)])
    unshared = CostModel(Deployment(model=LLAMA_8B, hardware=H100), Efficiency(kv_bandwidth_ratio=0.25))
    assert unshared.step_time(*StepShape(0, 0, 0, 32, keys, 32, 0, keys, decode_shared_key_tokens=shared)) == \
        pytest.approx(step(0))  # at the default ratio, 1, a shared key costs what any other does
    with pytest.raises(ValueError, match="kv_shared_bandwidth_ratio"):
        Efficiency(kv_shared_bandwidth_ratio=0)


def test_gathered_kv_past_the_last_level_cache_is_read_back_at_the_spill_rate() -> None:
    """A CPU's torch backend copies each layer's decode K/V, then attends the copy: the part of a layer's copy
    past `cache_bytes` is read again from memory at `kv_spill_bandwidth` x peak; a copy that fits costs nothing
    more, and a device without the figure (0) has no tier."""
    cpu = get_hardware("cpu-local")
    model = get_model("qwen2.5-0.5b")
    layer_kv = 2 * model.num_kv_heads * model.head_dim * 4  # fp32 K and V of one token in one layer
    cache = 32 * 2**20
    eff = Efficiency(kv_spill_bandwidth=0.1, kv_bandwidth_ratio=0.1)  # K/V reads, not attention FLOPs, bound it

    def decode(hardware, keys: int) -> float:
        cm = CostModel(Deployment(model=model, hardware=hardware, weight_dtype="fp32"), eff)
        return cm.step_time(num_decodes=64, decode_context_tokens=keys, num_sampling=64, decode_key_tokens=keys)

    tiered = replace(cpu, cache_bytes=cache)
    fits, spills = cache // layer_kv // 2, 3 * cache // layer_kv
    assert decode(tiered, fits) == pytest.approx(decode(cpu, fits))
    extra = decode(tiered, spills) - decode(cpu, spills)
    assert extra == pytest.approx(model.num_layers * (spills * layer_kv - cache) / (0.1 * cpu.memory_bandwidth), rel=1e-6)


def test_int4_weights_decode_faster_in_proportion_to_bytes() -> None:
    bf16, int4 = cost_model(weight_dtype="bf16"), cost_model(weight_dtype="int4")
    assert int4.deployment.weight_bytes_per_gpu() < 0.3 * bf16.deployment.weight_bytes_per_gpu()
    t16, t4 = decode_step(bf16), decode_step(int4)
    assert t4 < t16
    ratio = (t4 - EFF.step_overhead_s) / (t16 - EFF.step_overhead_s)
    assert ratio == pytest.approx(WEIGHT_BYTES["int4"] / WEIGHT_BYTES["bf16"], rel=0.05)
    # W4A16 dequantises to bf16: a compute-bound prefill gains nothing.
    assert prefill_step(int4, 8192) == pytest.approx(prefill_step(bf16, 8192), rel=0.01)


def test_fp8_on_h100_is_faster_in_both_regimes() -> None:
    bf16, fp8 = cost_model(), cost_model(weight_dtype="fp8")
    assert decode_step(fp8) < 0.6 * decode_step(bf16)  # half the bytes
    assert prefill_step(fp8, 8192) < 0.65 * prefill_step(bf16, 8192)  # twice the FLOP/s on GEMMs


def test_fp8_on_a100_raises_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"a100-80gb has no fp8 tensor cores.*choose one of bf16, fp16, int8, int4"):
        Deployment(model=LLAMA_8B, hardware=get_hardware("a100-80gb"), weight_dtype="fp8")


# ---------------------------------------------------------------------------- prefill: compute-bound


def test_large_prefill_is_compute_bound() -> None:
    """8192 prompt tokens: time = GEMM FLOPs / achieved FLOP/s + attention FLOPs / achieved FLOP/s."""
    cm = cost_model()
    tokens = 8192
    m = LLAMA_8B
    gemm = 2 * tokens * linear_params(m) + 2 * m.hidden_size * m.vocab_size  # LM head for the 1 sampled token
    attention = 4 * m.head_dim * m.num_attention_heads * tokens * (tokens + 1) / 2 * m.num_layers
    expected = gemm / gemm_flops_per_s() + attention / (H100.peak_flops["bf16"] * EFF.attention_flops)
    assert prefill_step(cm, tokens) == pytest.approx(expected + EFF.step_overhead_s, rel=0.10)
    # GEMMs are linear in tokens once compute-bound.
    assert cm.layer_gemm_time(8192) == pytest.approx(2 * cm.layer_gemm_time(4096), rel=0.01)
    assert cm.layer_gemm_time(8192) * m.num_layers == pytest.approx(
        2 * tokens * linear_params(m) / gemm_flops_per_s(), rel=0.01)


def test_prefill_attention_is_quadratic() -> None:
    cm = cost_model()
    a1 = cm.prefill_attention_time(4096, 4096 * 4097 / 2, 4096)
    a2 = cm.prefill_attention_time(8192, 8192 * 8193 / 2, 8192)
    assert a2 / a1 == pytest.approx(4.0, rel=0.01)


def test_a_chunk_with_cached_context_costs_more_attention_than_the_first_chunk() -> None:
    cm = cost_model()
    first = cm.step_time(num_prefill_tokens=512, prefill_attended_pairs=512 * 513 / 2, prefill_context_tokens=512)
    later = cm.step_time(num_prefill_tokens=512, prefill_attended_pairs=512 * (7680 + 513 / 2),
                         prefill_context_tokens=8192)
    assert later > first


# ---------------------------------------------------------------------------- tensor parallel


def test_tp2_halves_gemm_time_and_adds_all_reduce() -> None:
    tp1, tp2 = cost_model(tp=1), cost_model(tp=2)
    tokens = 8192
    assert tp2.layer_gemm_time(tokens) / tp1.layer_gemm_time(tokens) == pytest.approx(0.5, rel=0.02)
    assert tp1.communication_time(tokens) == 0.0
    # Two ring all-reduces of the activations per layer, each moving 2(tp-1)/tp of them per GPU.
    activation = tokens * LLAMA_8B.hidden_size * 2
    link = H100.interconnect_bandwidth * EFF.interconnect_bandwidth
    per_all_reduce = H100.interconnect_latency_s + 2 * (2 - 1) / 2 * activation / link
    assert tp2.communication_time(tokens) == pytest.approx(2 * LLAMA_8B.num_layers * per_all_reduce, rel=1e-9)
    t1, t2 = prefill_step(tp1, tokens), prefill_step(tp2, tokens)
    assert t1 / 2 < t2 < t1
    assert t2 == pytest.approx((t1 - EFF.step_overhead_s) / 2 + EFF.step_overhead_s
                               + tp2.communication_time(tokens), rel=0.05)


def test_tp2_batch1_decode_pays_collective_latency() -> None:
    tp1, tp2 = cost_model(tp=1), cost_model(tp=2)
    t1, t2 = decode_step(tp1), decode_step(tp2)
    halved = (t1 - EFF.step_overhead_s) / 2 + EFF.step_overhead_s
    latency = 2 * LLAMA_8B.num_layers * H100.interconnect_latency_s
    assert t2 < t1
    assert t2 > halved + latency * 0.99


# ---------------------------------------------------------------------------- decode runs


@pytest.mark.parametrize(("model", "tp", "num_decodes", "context"), [
    ("llama-3.1-8b", 1, 1, 512),
    ("llama-3.1-8b", 1, 64, 64 * 1000),
    ("llama-3.1-8b", 2, 7, 9999),
    ("mixtral-8x7b", 2, 16, 16 * 300),
])
def test_decode_run_offsets_are_cumulative_step_times(model: str, tp: int, num_decodes: int, context: int) -> None:
    """Step j of a run attends context + j*num_decodes tokens; offsets are the running sum of step times."""
    cm = cost_model(model, tp=tp)
    steps = 40
    offsets = cm.decode_run_offsets(num_decodes, context + num_decodes * np.arange(steps))
    assert offsets.shape == (steps,)
    expected = np.cumsum([
        cm.step_time(num_decodes=num_decodes, decode_context_tokens=context + j * num_decodes,
                     num_sampling=num_decodes)
        for j in range(steps)
    ])
    np.testing.assert_allclose(offsets, expected, rtol=1e-9, atol=0)
    assert np.all(np.diff(offsets) > 0)


# ---------------------------------------------------------------------------- MoE


def test_moe_batch1_decode_reads_two_of_eight_experts() -> None:
    cm = cost_model("mixtral-8x7b")
    m = get_model("mixtral-8x7b")
    h, q, kv = m.hidden_size, m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
    dense = h * (q + 2 * kv) + q * h + h * m.num_experts  # attention projections + router
    expert = 3 * h * m.intermediate_size
    two_experts = (dense + 2 * expert) * 2 / bandwidth()
    all_experts = (dense + m.num_experts * expert) * 2 / bandwidth()
    assert cm.layer_gemm_time(1) == pytest.approx(two_experts, rel=0.01)
    # With many tokens, routing touches every expert: the whole layer is read.
    assert cm.layer_gemm_time(64) == pytest.approx(all_experts, rel=0.02)
    assert cm.layer_gemm_time(1) < cm.layer_gemm_time(4) < cm.layer_gemm_time(64)


def test_shared_expert_and_dense_layers_add_their_weight_reads() -> None:
    """Qwen2-MoE: at batch 1 a layer reads its top-k experts, the router, and the always-on shared expert with
    its gate; a layer kept dense (mlp_only_layers) reads its dense MLP instead."""
    qwen = {"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 5632,
            "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
            "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
            "vocab_size": 151936, "max_position_embeddings": 8192}
    m = from_hf_config(qwen)
    h, q, kv = m.hidden_size, m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
    attention = h * (q + 2 * kv) + q * h
    moe = h * m.num_experts + 4 * 3 * h * 1408 + 3 * h * 5632 + h  # router, top-4, shared expert + gate
    cm = CostModel(Deployment(model=m, hardware=H100), EFF)
    assert cm.layer_gemm_time(1) == pytest.approx((attention + moe) * 2 / bandwidth(), rel=0.01)
    half_dense = from_hf_config({**qwen, "mlp_only_layers": list(range(12))})
    cm = CostModel(Deployment(model=half_dense, hardware=H100), EFF)
    dense = 3 * h * 5632
    assert cm.layer_gemm_time(1) == pytest.approx((attention + (moe + dense) / 2) * 2 / bandwidth(), rel=0.01)


def test_moe_decode_is_cheaper_than_a_dense_model_of_the_same_size() -> None:
    mixtral = get_model("mixtral-8x7b")
    assert mixtral.num_params() > 5 * LLAMA_8B.num_params()
    assert decode_step(cost_model("mixtral-8x7b", tp=2)) < 2 * decode_step(cost_model("llama-3.1-8b", tp=2))


# ---------------------------------------------------------------------------- memory fit


def test_405b_on_one_h100_does_not_fit_and_says_how_much_is_missing() -> None:
    d = Deployment(model=get_model("llama-3.1-405b"), hardware=H100)
    with pytest.raises(DoesNotFitError) as info:
        d.num_kv_blocks(block_size=16, max_num_batched_tokens=8192)
    message = str(info.value)
    found = re.search(r"([\d.]+) GiB missing", message)
    assert found, message
    usable = H100.memory_bytes * 0.9
    need = d.weight_bytes_per_gpu() + d.activation_bytes_per_gpu(8192) + 16 * d.kv_bytes_per_token_per_gpu()
    assert float(found.group(1)) == pytest.approx((need - usable) / GiB, abs=0.06)
    assert float(found.group(1)) > 600  # 405B bf16 weights are ~754 GiB
    assert "--tp" in message and "llama-3.1-405b" in message
    assert isinstance(info.value, ValueError)


def test_405b_fits_on_eight_h200_but_not_eight_h100() -> None:
    m = get_model("llama-3.1-405b")
    assert Deployment(model=m, hardware=get_hardware("h200"), tp=8).num_kv_blocks(16, 8192) > 1000
    with pytest.raises(DoesNotFitError, match="8x h100-sxm"):
        Deployment(model=m, hardware=H100, tp=8).num_kv_blocks(16, 8192)


def test_num_kv_blocks_is_free_memory_over_block_bytes() -> None:
    d = Deployment(model=LLAMA_8B, hardware=H100)
    free = H100.memory_bytes * 0.9 - d.weight_bytes_per_gpu() - d.activation_bytes_per_gpu(8192)
    per_block = 16 * 2 * LLAMA_8B.num_layers * LLAMA_8B.num_kv_heads * LLAMA_8B.head_dim * 2
    assert d.num_kv_blocks(16, 8192) == int(free // per_block)


def test_a_draft_model_takes_its_weights_and_a_block_per_target_block_from_the_kv_cache() -> None:
    """As the engine sizes it: the draft's weights whole (not quantized) and its K/V per block beside the target's."""
    target, draft = get_model("qwen2.5-7b"), get_model("qwen2.5-0.5b")
    d = Deployment(model=target, hardware=H100, quantization="int8")
    free = (H100.memory_bytes * 0.9 - d.weight_bytes_per_gpu() - Deployment(model=draft, hardware=H100).weight_bytes_per_gpu()
            - d.activation_bytes_per_gpu(8192))
    per_block = sum(16 * 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2 for m in (target, draft))
    assert d.num_kv_blocks(16, 8192, draft=draft) == int(free // per_block) < d.num_kv_blocks(16, 8192)


def test_kv_blocks_grow_with_tp() -> None:
    blocks = [Deployment(model=LLAMA_8B, hardware=H100, tp=tp).num_kv_blocks(16, 8192) for tp in (1, 2, 4, 8)]
    assert blocks == sorted(set(blocks))
    assert blocks[1] > 2 * blocks[0]  # half the KV heads per GPU and half the weights


def test_kv_blocks_grow_with_fp8_kv_cache() -> None:
    auto = Deployment(model=LLAMA_8B, hardware=H100).num_kv_blocks(16, 8192)
    fp8 = Deployment(model=LLAMA_8B, hardware=H100, kv_cache_dtype="fp8").num_kv_blocks(16, 8192)
    assert fp8 == pytest.approx(2 * auto, rel=0.001)


# ---------------------------------------------------------------------------- edges and validation


def test_an_empty_step_takes_no_time() -> None:
    assert cost_model().step_time() == 0.0


@pytest.mark.parametrize("field", ["gemm_flops", "attention_flops", "memory_bandwidth", "interconnect_bandwidth"])
@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_efficiency_fractions_are_validated(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Efficiency(**{field: value})


def test_negative_step_overhead_is_rejected() -> None:
    with pytest.raises(ValueError, match="step_overhead_s"):
        Efficiency(step_overhead_s=-1e-3)


def test_lower_efficiency_means_slower_steps() -> None:
    slow = CostModel(Deployment(model=LLAMA_8B, hardware=H100), Efficiency(memory_bandwidth=0.5, gemm_flops=0.4))
    fast = cost_model()
    assert decode_step(slow) > decode_step(fast)
    assert prefill_step(slow, 8192) > prefill_step(fast, 8192)


def test_padded_decode_keys_cost_like_real_ones() -> None:
    """The engine gathers and attends padding keys (masked), so they cost what that many real keys cost."""
    cm = cost_model("qwen2.5-0.5b")
    unpadded = cm.step_time(num_decodes=16, decode_context_tokens=16 * 600, num_sampling=16)
    assert cm.step_time(num_decodes=16, decode_context_tokens=16 * 600, num_sampling=16,
                        decode_key_tokens=16 * 600) == unpadded
    padded = cm.step_time(num_decodes=16, decode_context_tokens=16 * 600, num_sampling=16, decode_key_tokens=16 * 800)
    assert padded == cm.step_time(num_decodes=16, decode_context_tokens=16 * 800, num_sampling=16)
    extra = cm.decode_attention_time(16, 16 * 800) - cm.decode_attention_time(16, 16 * 600)
    assert padded - unpadded == pytest.approx(cm.num_layers * extra) and extra > 0


@pytest.mark.parametrize("model, hardware, deployment", [
    ("qwen2.5-0.5b", "cpu-local", {"weight_dtype": "fp32"}),
    ("mixtral-8x7b", "h100-sxm", {"tp": 2}),
    ("qwen2.5-7b", "h100-sxm", {"quantization": "int4", "max_lora_rank": 16}),
])
def test_steps_priced_as_columns_cost_what_each_costs_alone(model, hardware, deployment) -> None:
    """Calibration's fit prices all its steps in one call, one array per field: bit for bit the scalar prices,
    over steps of every kind (empty, prefill-only, decode-only, mixed, under adapters, padded or shared keys)."""
    from batchserve.sim.cost_model import shape_columns

    rng = np.random.default_rng(0)
    shapes = [StepShape()]
    for _ in range(400):
        p, d = int(rng.choice([0, rng.integers(1, 2048)])), int(rng.choice([0, rng.integers(1, 128)]))
        context = d * int(rng.integers(1, 4096))
        lora = int(rng.integers(0, p + d + 1)) if rng.random() < 0.3 else 0
        shapes.append(StepShape(
            p, p * (p + 1) / 2, p, d, context, d + (p > 0), int(p > 0), int(rng.choice([0, context + 16 * d])),
            int(rng.integers(0, d + 1)), lora, int(lora > 0) * int(rng.integers(1, 3)), int(rng.integers(0, 2)),
            int(rng.integers(0, 2)), int(rng.integers(0, 4)), int(rng.integers(0, d + 1)), int(rng.integers(0, 3 * d + 1)),
            int(rng.integers(0, 2)), int(rng.integers(0, context // 2 + 1)), d * (p == 0) * int(rng.integers(0, 2))))
    assert {min(s.num_compiled_rows, 2) for s in shapes} == {0, 1, 2}  # eager, one-row and wider compiled steps
    cm = CostModel(Deployment(model=get_model(model), hardware=get_hardware(hardware), **deployment),
                   replace(EFF, kv_bandwidth_ratio=0.3, lora_segment_overhead_s=1e-4, new_shape_overhead_s=1e-3,
                           compiled_overhead_ratio=0.4, gemv_bandwidth_ratio=1.5))
    one_by_one = np.array([cm.step_time(*shape) for shape in shapes])
    tokens = np.array([s.num_prefill_tokens + s.num_decodes for s in shapes])
    assert ((one_by_one > 0) == (tokens > 0)).all() and 0 < (tokens == 0).sum() < len(shapes) / 2  # empty steps cost nothing
    assert np.array_equal(cm.step_time(*shape_columns(shapes)), one_by_one)
    assert np.array_equal(cm.step_time(*shape_columns([StepShape()] * 3)), np.zeros(3))  # no tokens in any step


def test_a_compiled_step_pays_its_own_fixed_cost_and_one_row_reads_weights_at_the_gemv_rate() -> None:
    """Closed form: the ratios move the step overhead of every compiled step, and the weight reads of a one-row
    one (layers and LM head) only; at 1 (a profile calibrated eagerly) a compiled step costs an eager one."""
    eff = replace(EFF, step_overhead_s=2e-3, token_overhead_s=1e-5)
    tuned = replace(eff, compiled_overhead_ratio=0.25, gemv_bandwidth_ratio=1.6)
    cm, cm_tuned = (CostModel(Deployment(get_model("qwen2.5-0.5b"), get_hardware("cpu-local"), weight_dtype="fp32"), e)
                    for e in (eff, tuned))
    for rows in (1, 8):
        shape = StepShape(num_decodes=rows, decode_context_tokens=rows * 300, num_sampling=rows)
        compiled = shape._replace(num_compiled_rows=rows)
        assert cm.step_time(*compiled) == cm.step_time(*shape)
        weights = cm.num_layers * cm.layer_gemm_time(rows) + cm.lm_head_time(rows)
        saved = 0.75 * 2e-3 + (weights * (1 - 1 / 1.6) if rows == 1 else 0.0)
        assert cm_tuned.step_time(*shape) - cm_tuned.step_time(*compiled) == pytest.approx(saved, rel=1e-9)

"""The simulator's expert term: touched experts in closed form, expert GEMM efficiency, its fit, MoE memory."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.model_config import from_hf_config
from batchserve.sim.calibration import Observation, fit_efficiency, fitted_fields, predict
from batchserve.sim.cost_model import CostModel, Efficiency, StepShape
from batchserve.sim.deployment import WEIGHT_BYTES, Deployment, DoesNotFitError
from batchserve.sim.experts import expected_active_experts, tokens_per_expert
from batchserve.sim.hardware import Hardware, get_hardware
from batchserve.sim.models import get_model
from batchserve.sim.simulate import hardware_efficiency

# bench/bench_moe.py's shape: Mixtral layout, 16 experts of width 1024, top-2
BENCH_MOE = from_hf_config({"architectures": ["MixtralForCausalLM"], "hidden_size": 1024, "intermediate_size": 1024,
                            "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
                            "vocab_size": 32000, "num_local_experts": 16, "num_experts_per_tok": 2,
                            "max_position_embeddings": 2048}, name="bench-moe")


@settings(max_examples=40, deadline=None)
@given(num_experts=st.integers(1, 5), data=st.data(), tokens=st.integers(0, 3))
def test_expected_active_experts_equals_the_mean_over_every_routing(num_experts, data, tokens) -> None:
    """Exhaustive: every token picks each top-k subset with equal probability; average the distinct experts."""
    top_k = data.draw(st.integers(1, num_experts))
    subsets = list(itertools.combinations(range(num_experts), top_k))
    routings = list(itertools.product(subsets, repeat=tokens))
    mean = Fraction(sum(len(set().union(*r)) for r in routings), len(routings))
    assert expected_active_experts(num_experts, top_k, tokens) == pytest.approx(float(mean), rel=1e-12, abs=1e-12)


def test_tokens_per_expert_runs_from_one_row_to_the_even_share() -> None:
    assert tokens_per_expert(16, 2, 1) == pytest.approx(1.0)
    assert tokens_per_expert(16, 2, 4096) == pytest.approx(4096 * 2 / 16)
    assert tokens_per_expert(16, 2, 32) == pytest.approx(64 / expected_active_experts(16, 2, 32))
    assert tokens_per_expert(0, 0, 32) == 0.0


def test_decode_step_reads_the_touched_experts_weights() -> None:
    """Weight-bound decode: one MoE layer reads E(1-(1-k/E)^n) experts' gate/up/down, for every n."""
    d = Deployment(model=BENCH_MOE, hardware=get_hardware("h100-sxm"), weight_dtype="bf16")
    eff = Efficiency()
    cm = CostModel(d, eff)
    expert_bytes = 3 * 1024 * 1024 * WEIGHT_BYTES["bf16"]
    for n in (1, 4, 32):
        touched = 16 * (1 - (1 - 2 / 16) ** n)
        rows_bytes = n * 2 * (2 * (1024 + 2048) + 2 * (1024 + 1024))  # each expert row's activations in and out
        assert cm.expert_gemm_time(n) == pytest.approx(
            (touched * expert_bytes + rows_bytes) / (d.hardware.memory_bandwidth * eff.memory_bandwidth), rel=1e-9)


def test_expert_flops_prices_compute_bound_expert_gemms_only() -> None:
    d = Deployment(model=BENCH_MOE, hardware=get_hardware("cpu-local"), weight_dtype="fp32")
    n = 4096  # 512 rows per expert: compute bound
    fast, slow = CostModel(d, Efficiency(expert_flops=0.8)), CostModel(d, Efficiency(expert_flops=0.4))
    expert_flops = 2 * n * 2 * 3 * 1024 * 1024
    peak = d.hardware.peak_flops["fp32"]
    assert slow.layer_gemm_time(n) - fast.layer_gemm_time(n) == pytest.approx(
        expert_flops / (0.4 * peak) - expert_flops / (0.8 * peak), rel=1e-9)
    dense = Deployment(model=get_model("qwen2.5-0.5b"), hardware=get_hardware("cpu-local"), weight_dtype="fp32")
    assert CostModel(dense, Efficiency(expert_flops=0.1)).layer_gemm_time(n) == CostModel(dense).layer_gemm_time(n)


def _grid() -> list[StepShape]:
    shapes = [StepShape(n, n * (n + 1) / 2, n, 0, 0, 1, 1) for n in (16, 64, 256, 1024, 2048)]
    shapes += [StepShape(n, n * (512 + (n + 1) / 2), 512 + n, 0, 0, 1, 1) for n in (32, 256)]
    shapes += [StepShape(0, 0, 0, b, b * c, b) for b in (1, 4, 16, 64, 128) for c in (16, 512, 2048)]
    shapes += [StepShape(256, 256 * 128.5, 256, b, b * 64, b, 1) for b in (4, 16)]
    return shapes


def test_calibration_fits_the_expert_term_on_an_moe_model_only() -> None:
    moe = Deployment(model=BENCH_MOE, hardware=get_hardware("cpu-local"), weight_dtype="fp32")
    truth = Efficiency(gemm_flops=0.6, expert_flops=0.3, attention_flops=0.2, memory_bandwidth=0.45,
                       step_overhead_s=0.004, token_overhead_s=2e-5, sequence_overhead_s=3e-4, chunk_overhead_s=2e-3)
    shapes = _grid()
    observations = [Observation(s, t) for s, t in zip(shapes, predict(moe, truth, [Observation(s, 1) for s in shapes]))]
    assert "expert_flops" in fitted_fields(observations, moe=True)
    assert "expert_flops" not in fitted_fields(observations)
    dense = Deployment(model=get_model("qwen2.5-0.5b"), hardware=get_hardware("cpu-local"), weight_dtype="fp32")
    dense_fit = fit_efficiency(dense, [Observation(s, t) for s, t in zip(
        shapes, predict(dense, truth, [Observation(s, 1) for s in shapes]))])
    assert dense_fit.expert_flops == dense_fit.gemm_flops  # a dense profile prices experts as its GEMMs
    fitted = fit_efficiency(moe, observations)
    assert fitted.expert_flops == pytest.approx(0.3, rel=0.15)
    predicted = predict(moe, fitted, observations)
    assert max(abs(p / o.seconds - 1) for p, o in zip(predicted, observations)) < 0.05


def test_a_profile_fitted_on_a_dense_model_prices_experts_at_its_gemm_efficiency() -> None:
    cpu = get_hardware("cpu-local")
    profile = Hardware(**{**cpu.to_dict(), "name": "fitted", "efficiency": {"gemm_flops": 0.42}})
    assert hardware_efficiency(profile).expert_flops == 0.42
    fitted_moe = Hardware(**{**cpu.to_dict(), "name": "fitted", "efficiency": {"gemm_flops": 0.42, "expert_flops": 0.2}})
    assert hardware_efficiency(fitted_moe).expert_flops == 0.2


def test_planner_memory_holds_every_expert_while_a_decode_step_reads_two() -> None:
    """Mixtral 8x7B in bf16: all 8 experts resident (does not fit one 80 GB H100, fits two), but a batch-1
    decode step costs about a quarter of reading every expert."""
    m = get_model("mixtral-8x7b")
    one = Deployment(model=m, hardware=get_hardware("h100-sxm"), weight_dtype="bf16")
    assert one.weight_bytes_per_gpu() == pytest.approx(m.num_params() * 2, rel=1e-9)
    assert m.num_params() == pytest.approx(46.7e9, rel=0.01)
    with pytest.raises(DoesNotFitError):
        one.num_kv_blocks(16, 8192)
    assert Deployment(model=m, hardware=get_hardware("h100-sxm"), weight_dtype="bf16", tp=2).num_kv_blocks(16, 8192) > 0
    all_experts = m.num_layers * m.num_experts * 3 * m.hidden_size * m.intermediate_size * 2
    bandwidth = one.hardware.memory_bandwidth * Efficiency().memory_bandwidth
    assert m.num_layers * CostModel(one).expert_gemm_time(1) == pytest.approx(all_experts * 2 / 8 / bandwidth, rel=0.01)

"""The cost model's weight-only int8/int4 term: packed bytes per step in closed form, the dequantization
overhead, memory, and its fit by calibration (only for quantized deployments)."""

from __future__ import annotations

import dataclasses

import pytest

from batchserve.config import CacheConfig, SchedulerConfig
from batchserve.sim.calibration import Observation, fit_efficiency, fitted_fields, predict
from batchserve.sim.cost_model import CostModel, Efficiency, StepShape
from batchserve.sim.deployment import Deployment
from batchserve.sim.hardware import get_hardware
from batchserve.sim.models import get_model
from batchserve.sim.quantization import quantized_weight_bytes
from batchserve.sim.simulate import ClusterConfig, resolve

# Memory-bound: FLOPs are free, so a step costs exactly its bytes over the bandwidth.
FREE_FLOPS = dataclasses.replace(get_hardware("cpu-local"), peak_flops={"bf16": 1e30, "fp32": 1e30},
                                 memory_bandwidth=1e10)
NO_OVERHEAD = Efficiency(memory_bandwidth=1.0, step_overhead_s=0.0)


def _model(quantization: str | None, group_size: int = 32, eff: Efficiency = NO_OVERHEAD,
           quantize_lm_head: bool = False) -> CostModel:
    d = Deployment(get_model("qwen2.5-0.5b"), FREE_FLOPS, weight_dtype="bf16", quantization=quantization,
                   quantization_group_size=group_size, quantize_lm_head=quantize_lm_head)
    return CostModel(d, eff)


@pytest.mark.parametrize("method, group_size, expected", [
    ("int8", 32, 576 * 1536 + 2 * 1536),  # int8 values + a bf16 scale per output channel
    ("int4", 32, 576 * 1536 / 2 + 4 * 1536 * 576 / 32),  # two per byte + bf16 scale and offset per group
    ("int4", 128, 576 * 1536 / 2 + 4 * 1536 * 576 / 128),
])
def test_packed_weight_bytes(method, group_size, expected):
    assert quantized_weight_bytes(576, 1536, method, group_size) == expected


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("quantize_lm_head", [False, True])
def test_a_memory_bound_decode_step_reads_the_packed_weights(method, quantize_lm_head):
    """Qwen2.5-0.5B shape, one decode token: every projection's packed bytes plus its activations (bf16),
    the LM head in bf16 or int8, over the bandwidth."""
    m = get_model("qwen2.5-0.5b")
    h, q, kv, inter, v = m.hidden_size, m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim, \
        m.intermediate_size, m.vocab_size
    gemms = [(h, q + 2 * kv), (q, h), (h, 2 * inter), (inter, h)]
    layer_bytes = sum(quantized_weight_bytes(k, n, method, 32) + (k + n) * 2 for k, n in gemms)
    head_bytes = (quantized_weight_bytes(h, v, "int8", 32) if quantize_lm_head else h * v * 2) + (h + v) * 2
    model = _model(method, quantize_lm_head=quantize_lm_head)
    assert model.layer_gemm_time(1) == pytest.approx(layer_bytes / 1e10, rel=1e-12)
    assert model.lm_head_time(1) == pytest.approx(head_bytes / 1e10, rel=1e-12)
    unquantized = _model(None)
    ratio = model.layer_gemm_time(1) / unquantized.layer_gemm_time(1)
    assert ratio == pytest.approx(0.5 if method == "int8" else 0.25 + 1 / 16, rel=0.01)  # of bf16's 2 bytes


def test_the_dequantization_overhead_is_charged_per_weight_read():
    m = get_model("qwen2.5-0.5b")
    plain = _model("int4", quantize_lm_head=True)
    slow = _model("int4", eff=dataclasses.replace(NO_OVERHEAD, dequant_overhead_s=1e-4), quantize_lm_head=True)
    layer_weights = (m.hidden_size * (m.num_attention_heads + 2 * m.num_kv_heads) * m.head_dim
                     + m.num_attention_heads * m.head_dim * m.hidden_size + 3 * m.hidden_size * m.intermediate_size)
    assert slow.layer_gemm_time(8) - plain.layer_gemm_time(8) == pytest.approx(layer_weights * 1e-10, rel=1e-9)
    assert slow.lm_head_time(1) - plain.lm_head_time(1) == pytest.approx(m.hidden_size * m.vocab_size * 1e-10)
    unquantized = _model(None, eff=dataclasses.replace(NO_OVERHEAD, dequant_overhead_s=1e-4))
    assert unquantized.layer_gemm_time(8) == _model(None).layer_gemm_time(8)  # no packed weights, no term


def test_quantized_weights_take_less_memory_and_leave_more_kv_blocks():
    m = get_model("qwen2.5-0.5b")
    bf16 = Deployment(m, get_hardware("cpu-local"), weight_dtype="bf16")
    int4 = Deployment(m, get_hardware("cpu-local"), weight_dtype="bf16", quantization="int4")
    head = Deployment(m, get_hardware("cpu-local"), weight_dtype="bf16", quantization="int4", quantize_lm_head=True)
    embed = m.vocab_size * m.hidden_size
    layers = m.num_params() - embed  # tied: the table once, the head reads it
    expected = layers * (0.5 + 4 / 32) + embed * 2
    assert int4.weight_bytes_per_gpu() == pytest.approx(expected, rel=1e-9)
    assert head.weight_bytes_per_gpu() == pytest.approx(expected + embed * (1 + 2 / m.hidden_size), rel=1e-9)
    assert int4.num_kv_blocks(16, 2048) > bf16.num_kv_blocks(16, 2048)


def test_simulate_takes_quantization_and_names_what_it_cannot_model():
    setup = resolve(ClusterConfig(model="qwen2.5-0.5b", hardware="cpu-local", quantization="int8"),
                    SchedulerConfig(), CacheConfig())
    assert setup.deployment.quantization == "int8" and setup.to_dict()["deployment"]["quantization"] == "int8"
    with pytest.raises(ValueError, match="quantization 'gguf' is not modelled; use one of int8, int4"):
        Deployment(get_model("qwen2.5-0.5b"), get_hardware("cpu-local"), quantization="gguf")
    with pytest.raises(ValueError, match="weight dtype fp8 is quantized already"):
        Deployment(get_model("qwen2.5-0.5b"), get_hardware("h100-sxm"), weight_dtype="fp8", quantization="int4")


def test_calibration_fits_the_dequantization_term_only_for_quantized_steps():
    hardware = get_hardware("cpu-local")
    plain = Deployment(get_model("qwen2.5-0.5b"), hardware, weight_dtype="bf16")
    int8 = dataclasses.replace(plain, quantization="int8")
    shapes = [StepShape(0, 0, 0, b, b * c, b) for b in (1, 2, 4, 16, 64) for c in (16, 512)]
    shapes += [StepShape(n, n * (n + 1) / 2, n, 0, 0, 1, 1) for n in (16, 128, 512, 2048)]
    observations = [Observation(s, 1.0) for s in shapes]
    assert "dequant_overhead_s" not in fitted_fields(observations)
    assert "dequant_overhead_s" in fitted_fields(observations, quantized=True)
    true = Efficiency(gemm_flops=0.4, memory_bandwidth=0.5, step_overhead_s=0.002, dequant_overhead_s=2e-4)
    measured = [Observation(s, float(t)) for s, t in zip(shapes, predict(int8, true, observations))]
    fitted = fit_efficiency(int8, measured)
    errors = predict(int8, fitted, measured) / [o.seconds for o in measured] - 1
    assert abs(errors).max() < 0.02  # (at decode the term and the bandwidth both scale with the weights read,
    # so the fit may split them differently; the step times are what it must get right)

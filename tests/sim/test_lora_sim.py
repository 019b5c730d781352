"""The simulator's LoRA term: closed-form costs, slot admission as the engine's, lazy decodes counted right."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_replay import replay

from batchserve.attention_layout import AttentionConfig
from batchserve.config import CacheConfig, scheduler_config
from batchserve.lora import LoRAConfig
from batchserve.lora.slots import SlotTable
from batchserve.sim.batch import SimBatch
from batchserve.sim.calibration import Observation, fit_efficiency, fit_lora_terms, fitted_fields, predict
from batchserve.sim.cost_model import CostModel, Efficiency, StepShape
from batchserve.sim.deployment import Deployment
from batchserve.sim.executor import SimExecutor, step_adapters
from batchserve.sim.hardware import get_hardware
from batchserve.sim.models import get_model
from batchserve.sim.simulate import ClusterConfig, build_cluster, resolve, simulate
from batchserve.workload import WorkloadSpec, synthetic_requests

RANK = 16


def deployment(rank: int = RANK, tp: int = 1, hardware: str = "h100-sxm") -> Deployment:
    return Deployment(get_model("qwen2.5-0.5b"), get_hardware(hardware), tp=tp, max_lora_rank=rank)


def test_lora_time_is_the_roofline_of_delta_flops_and_slot_bytes_plus_loads() -> None:
    d = deployment()
    m, hw, eff = d.model, d.hardware, Efficiency(lora_segment_overhead_s=3e-5)
    cost = CostModel(d, eff)
    h, inter, q, kv = m.hidden_size, m.intermediate_size, m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
    # every HF target's A [r, in] and B [out, r]: q, k, v, o, gate, up, down
    elements = RANK * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + inter) + (inter + h))
    wb = 2.0  # bf16
    for tokens, segments, loads in [(1, 1, 0), (8, 4, 1), (4096, 2, 2)]:
        flops = 2 * elements * tokens  # shrink and expand: 2 r (in + out) per target per token
        per_layer = max(flops / (hw.peak_flops["bf16"] * eff.lora_flops),
                        segments * elements * wb / (hw.memory_bandwidth * eff.memory_bandwidth))
        copy = loads * m.num_layers * elements * wb / hw.host_bandwidth
        want = m.num_layers * per_layer + copy + segments * 3e-5
        assert cost.lora_time(tokens, segments, loads) == pytest.approx(want, rel=1e-12)
        base = StepShape(num_prefill_tokens=tokens, prefill_attended_pairs=tokens * (tokens + 1) / 2,
                         prefill_context_tokens=tokens, num_sampling=1, num_prefill_seqs=1)
        lora = base._replace(num_lora_tokens=tokens, num_lora_segments=segments, num_lora_loads=loads)
        assert cost.step_time(*lora) - cost.step_time(*base) == pytest.approx(want, rel=1e-9)
    # small batches read the adapters (bandwidth-bound), so a second segment costs; big ones compute
    assert cost.lora_time(8, 2, 0) > 1.9 * cost.lora_time(8, 1, 0)
    assert cost.lora_time(8192, 2, 0) - 2 * 3e-5 == pytest.approx(cost.lora_time(8192, 1, 0) - 3e-5, rel=1e-9)
    # tensor parallelism splits each target's slot like its base weight
    assert CostModel(deployment(tp=2), eff).lora_layer_elements < elements
    # no adapters, no cost; and a replica without LoRA charges nothing whatever the shape says
    assert cost.lora_time(0, 0, 0) == 0.0
    assert CostModel(deployment(rank=0), eff).lora_time(64, 2, 1) == pytest.approx(2 * 3e-5)


@pytest.mark.parametrize("weight_dtype", ["fp8", "int8", "int4"])
def test_adapters_cost_the_same_over_quantized_base_weights(weight_dtype: str) -> None:
    # slots hold the activation dtype (bf16) and their GEMMs run in it, whatever the base weights are stored in
    bf16 = CostModel(deployment())
    quantized = CostModel(replace(deployment(), weight_dtype=weight_dtype))
    for tokens, segments, loads in [(1, 1, 1), (8, 4, 0), (4096, 2, 2)]:
        assert quantized.lora_time(tokens, segments, loads) == pytest.approx(bf16.lora_time(tokens, segments, loads))


def test_a_cpu_profile_loads_adapters_at_memory_bandwidth() -> None:
    d = deployment(hardware="cpu-local")
    assert d.hardware.host_bandwidth is None
    cost = CostModel(d)
    one = cost.lora_time(1, 1, 1) - cost.lora_time(1, 1, 0)
    assert one == pytest.approx(d.model.num_layers * cost.lora_layer_elements * 2.0 / d.hardware.memory_bandwidth)


def test_slot_table_is_an_lru_that_keeps_the_step_s_adapters() -> None:
    slots = SlotTable(2)
    assert slots.activate("a", {"a"}) == (0, True)
    assert slots.activate("b", {"b"}) == (1, True)
    assert slots.activate("a", {"a"}) == (0, False)  # resident: no copy, now most recent
    assert slots.activate("c", {"c", "a"}) == (1, True)  # b is least recent and unneeded
    assert slots.resident == ["a", "c"]
    assert slots.activate("d", {"d", "c"}) == (0, True)  # a is evicted although used more recently than c
    with pytest.raises(RuntimeError, match="max_loras=2"):
        slots.activate("e", {"c", "d", "e"})


def _setup(max_loras: int, enable: bool = True, num_blocks: int | None = None):
    lora = LoRAConfig(enable_lora=enable, max_loras=max_loras, max_lora_rank=RANK)
    return resolve(ClusterConfig(model="qwen2.5-0.5b", hardware="h100-sxm"),
                   scheduler_config("sarathi", max_num_seqs=32), CacheConfig(num_blocks=num_blocks), lora=lora)


def _spec(num_adapters: int, **kw) -> WorkloadSpec:
    return WorkloadSpec(**{"num_requests": 200, "rate": 50.0, "input_len": "uniform:16:400",
                           "output_len": "uniform:8:120", "num_adapters": num_adapters, **kw})


def _timeline(result) -> list[tuple]:
    return sorted((r.request_id, r.first_token_time, r.finish_time) for r in result.records)


def test_without_adapters_turning_lora_on_changes_nothing() -> None:
    off = simulate(_setup(2, enable=False), synthetic_requests(_spec(0)))
    on = simulate(_setup(2), synthetic_requests(_spec(0)))
    assert _timeline(on) == _timeline(off) and on.num_steps == off.num_steps


def test_adapters_cost_time_and_more_slots_admit_sooner() -> None:
    base = simulate(_setup(8), synthetic_requests(_spec(0)))
    wide = simulate(_setup(8), synthetic_requests(_spec(8)))
    narrow = simulate(_setup(2), synthetic_requests(_spec(8)))
    e2e = {name: sum(r.finish_time - r.arrival_time for r in res.records) for name, res in
           (("base", base), ("wide", wide), ("narrow", narrow))}
    assert e2e["base"] < e2e["wide"] < e2e["narrow"]


@pytest.mark.parametrize("max_loras", [1, 2, 3])
def test_the_simulator_never_runs_more_adapters_than_slots(max_loras: int) -> None:
    setup = _setup(max_loras, num_blocks=400)
    cluster = build_cluster(setup)
    executor = cluster.replicas[0].executor
    seen: list[int] = []
    execute = executor.execute

    def checked(batch: SimBatch):
        seen.append(len(step_adapters(batch)))
        result = execute(batch)
        assert len(executor.slots.resident) <= max_loras
        return result

    executor.execute = checked
    result = cluster.run(synthetic_requests(_spec(5, adapter_zipf_exponent=0.5)))
    assert len(result.records) == 200 and not result.rejected
    assert max(seen) == max_loras and executor.num_lora_loads >= 5  # every adapter was loaded at least once


def _replay(lazy: bool, requests, max_loras: int, num_blocks: int, max_num_seqs: int, ratio: float) -> list[tuple]:
    cost = CostModel(deployment(), Efficiency(lora_segment_overhead_s=1e-4))
    return replay(lazy, requests, SimExecutor(cost, AttentionConfig(decode_bucket_ratio=ratio), max_loras),
                  scheduler_config("sarathi", max_num_batched_tokens=64, max_num_seqs=max_num_seqs),
                  CacheConfig(block_size=4, num_blocks=num_blocks), max_loras)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), max_loras=st.integers(1, 3), num_adapters=st.integers(1, 5),
       num_blocks=st.integers(40, 200), max_num_seqs=st.integers(1, 12), ratio=st.sampled_from([0.5, 0.7, 1.0]))
def test_lazy_decodes_cost_what_listed_decodes_cost_under_adapters(seed, max_loras, num_adapters, num_blocks,
                                                                   max_num_seqs, ratio) -> None:
    """The cohort's per-adapter counts give every step the LoRA tokens and segments of the listed rows, the slot
    table the same loads, and its grouping the engine's padded decode keys: lazy and explicit timelines agree."""
    spec = WorkloadSpec(num_requests=30, input_len="uniform:1:60", output_len="uniform:1:30", vocab_size=50,
                        num_adapters=num_adapters, seed=seed)
    lazy = _replay(True, list(synthetic_requests(spec)), max_loras, num_blocks, max_num_seqs, ratio)
    explicit = _replay(False, list(synthetic_requests(spec)), max_loras, num_blocks, max_num_seqs, ratio)
    for a, b in zip(lazy, explicit):
        assert a[0] == b[0] and a[3] == b[3]
        assert a[1:3] == pytest.approx(b[1:3], rel=1e-9)


def _grid() -> list[StepShape]:
    shapes = [StepShape(n, n * (n + 1) / 2, n, 0, 0, 1, 1) for n in (16, 64, 256, 1024)]
    shapes += [StepShape(n, n * (512 + (n + 1) / 2), 512 + n, 0, 0, 1, 1) for n in (32, 256)]
    shapes += [StepShape(0, 0, 0, b, b * c, b) for b in (1, 4, 16, 64) for c in (16, 512, 2048)]
    shapes += [StepShape(256, 256 * 128.5, 256, b, b * 64, b, 1) for b in (4, 16)]
    return shapes


def test_the_lora_terms_are_fitted_only_from_steps_that_ran_adapters() -> None:
    d = deployment(hardware="cpu-local")
    truth = Efficiency(gemm_flops=0.55, attention_flops=0.2, memory_bandwidth=0.45, step_overhead_s=0.004,
                       token_overhead_s=2e-5, sequence_overhead_s=3e-4, chunk_overhead_s=2e-3, lora_flops=0.3,
                       lora_segment_overhead_s=5e-4)
    shapes = _grid()

    def observe(shapes):
        return [Observation(s, t) for s, t in zip(shapes, predict(d, truth, [Observation(s, 1) for s in shapes]))]

    assert "lora_flops" not in fitted_fields(observe(shapes))
    plain = fit_efficiency(d, observe(shapes))
    assert plain.lora_flops == Efficiency().lora_flops and plain.lora_segment_overhead_s == 0.0
    lora = [s._replace(num_lora_tokens=s.num_prefill_tokens + s.num_decodes, num_lora_segments=k)
            for s in shapes for k in (1, 4, 16) if s.num_prefill_tokens + s.num_decodes >= k]
    observations = observe(shapes + lora)
    assert {"lora_flops", "lora_segment_overhead_s"} <= set(fitted_fields(observations))
    fitted = fit_efficiency(d, observations)
    assert fitted.lora_segment_overhead_s == pytest.approx(5e-4, rel=0.25)
    assert fitted.lora_flops == pytest.approx(0.3, rel=0.25)
    predicted = predict(d, fitted, observations)
    assert max(abs(p / o.seconds - 1) for p, o in zip(predicted, observations)) < 0.05


def _twins() -> list[tuple[StepShape, StepShape]]:
    """Steps as `lora_phases` runs them: a 16-token-prompt chunk of b rows then their decodes, and a 256-token
    prompt, under k adapters (a segment each), each beside its twin of base rows."""
    pairs = []
    for b, k in [(8, 1), (8, 8), (64, 1), (64, 8), (1, 1)]:
        n = 256 if b == 1 else 16
        for base in (StepShape(b * n, b * n * (n + 1) / 2, b * n, 0, 0, b, b),
                     StepShape(0, 0, 0, b, b * (n + 2), b)):
            pairs.append((base._replace(num_lora_tokens=b * n if base.num_prefill_tokens else b,
                                        num_lora_segments=k), base))
    return pairs


def test_the_lora_terms_price_what_adapters_add_to_their_base_twins() -> None:
    """The base steps measure 20% slower than the base terms say (the joint fit's compromise over the grid):
    fitted on the pairs' differences, the LoRA terms still come out as the engine's, and each step under
    adapters is predicted its twin's predicted time plus exactly what the adapters added."""
    d = deployment(hardware="cpu-local")
    base_eff = Efficiency(gemm_flops=0.55, attention_flops=0.2, memory_bandwidth=0.45, step_overhead_s=0.004)
    truth = replace(base_eff, lora_flops=0.08, lora_segment_overhead_s=2e-3)
    pairs = []
    for lora, base in _twins():
        added = predict(d, truth, [Observation(lora, 1)])[0] - predict(d, truth, [Observation(base, 1)])[0]
        measured_base = 1.2 * predict(d, truth, [Observation(base, 1)])[0]
        pairs.append((Observation(lora, measured_base + added), Observation(base, measured_base)))
    # a step under adapters that ran its token count first also built the base GEMMs' kernels: left out
    first_runs = [(Observation(a.shape._replace(num_new_shapes=1), a.seconds + 0.3 * b.seconds), b) for a, b in pairs]
    fitted = fit_lora_terms(d, base_eff, pairs + first_runs)
    assert fitted.lora_flops == pytest.approx(0.08, rel=0.02)
    assert fitted.lora_segment_overhead_s == pytest.approx(2e-3, rel=0.02)
    assert replace(fitted, lora_flops=base_eff.lora_flops, lora_segment_overhead_s=0.0) == base_eff
    for under, twin in pairs:
        a, b = predict(d, fitted, [under, twin])
        assert a - b == pytest.approx(under.seconds - twin.seconds, rel=0.02)
    # a step whose twin ran other rows tells nothing; too few pairs is an error, not a guess
    lora, base = _twins()[0]
    with pytest.raises(ValueError, match="paired with their base twins"):
        fit_lora_terms(d, base_eff, [(Observation(lora, 1.0), Observation(base._replace(num_decodes=3), 0.5))] * 5)


def test_a_lora_setup_records_its_slots_and_the_deployment_its_rank() -> None:
    setup = _setup(3)
    assert setup.deployment.max_lora_rank == RANK
    assert setup.to_dict()["lora"] == {"enable_lora": True, "max_loras": 3, "max_lora_rank": RANK,
                                       "max_cpu_loras": None}
    assert _setup(3, enable=False).deployment.max_lora_rank == 0
    assert replace(setup.lora, max_loras=1).max_loras == 1

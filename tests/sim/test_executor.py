"""step_shape: what the cost model sees of a batch, padding of the engine's decode groups included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_replay import replay

from batchserve.attention_layout import AttentionConfig, decode_layout
from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.batch import ScheduledBatch
from batchserve.gemm_shapes import SeenTokenCounts
from batchserve.request import Request, SamplingParams
from batchserve.sim.batch import SimBatch
from batchserve.sim.cost_model import CostModel, Efficiency
from batchserve.sim.decode_cohort import DecodeCohort
from batchserve.sim.deployment import Deployment
from batchserve.sim.executor import SimExecutor, step_shape
from batchserve.sim.hardware import get_hardware
from batchserve.sim.models import get_model
from batchserve.workload import WorkloadSpec, synthetic_requests


def _decoding(rid: str, computed: int) -> Request:
    req = Request(rid, list(range(computed + 1)), SamplingParams(max_tokens=8))
    req.num_computed_tokens = computed
    return req


def test_decode_keys_are_padded_per_group_as_the_engine_pads_them() -> None:
    reqs = [_decoding("a", 999), _decoding("b", 799), _decoding("c", 99)]  # keys 1000, 800, 100
    batch = ScheduledBatch(requests=reqs, num_tokens=[1, 1, 1], num_computed=[999, 799, 99])
    shape = step_shape(batch, AttentionConfig(decode_bucket_ratio=0.7))
    assert shape.num_decodes == 3 and shape.decode_context_tokens == 1900
    assert shape.decode_key_tokens == 2 * 1000 + 100  # 800 rides in 1000's group, 100 alone
    assert step_shape(batch, AttentionConfig(decode_bucket_ratio=1.0)).decode_key_tokens == 1900


def test_a_cohort_counts_its_keys_unpadded_beside_the_listed_rows() -> None:
    batch = ScheduledBatch(requests=[_decoding("a", 499)], num_tokens=[1], num_computed=[499])
    shape = step_shape(batch, AttentionConfig(), num_lazy_decodes=10, lazy_decode_context=3000)
    assert shape.num_decodes == 11 and shape.decode_context_tokens == 3500 and shape.decode_key_tokens == 3500


@settings(max_examples=60, deadline=None)
@given(contexts=st.lists(st.integers(1, 3000), min_size=1, max_size=40),
       ratio=st.sampled_from([0.0, 0.3, 0.7, 0.9, 1.0]), steps=st.integers(1, 50), leave=st.integers(0, 39))
def test_a_cohort_pads_its_decodes_as_the_engine_groups_them(contexts, ratio, steps, leave) -> None:
    """At every tick of a run, the cohort's padded keys equal decode_groups' padding of its members' keys."""
    cohort = DecodeCohort(block_size=16)
    members = [_decoding(str(i), c) for i, c in enumerate(contexts)]
    for req in members:
        req.block_ids = [0] * (req.num_computed_tokens // 16 + 1)
        cohort.join(req)
    if len(members) > 1:
        cohort.leave(members.pop(leave % len(members)))
    cohort.advance(3)
    keys = cohort.layout(ratio, steps)[0]
    for j in range(steps):
        lengths = [cohort.computed(r) + 1 + j for r in members]
        assert keys[j] == decode_layout(lengths, ratio)[0]
    extra = [5, 2500]
    assert cohort.layout(ratio, extra=extra)[0][0] == decode_layout(
        [cohort.computed(r) + 1 for r in members] + extra, ratio)[0]


def test_a_step_is_marked_new_only_the_first_time_its_token_count_runs() -> None:
    seen = SeenTokenCounts()
    first = ScheduledBatch(requests=[_decoding("a", 99), _decoding("b", 49)], num_tokens=[1, 1], num_computed=[99, 49])
    again = ScheduledBatch(requests=[_decoding("c", 9), _decoding("d", 19)], num_tokens=[1, 1], num_computed=[9, 19])
    prefill = ScheduledBatch(requests=[Request("p", list(range(2)), SamplingParams())], num_tokens=[2], num_computed=[0])
    assert [step_shape(b, seen=seen).num_new_shapes for b in (first, again, prefill)] == [1, 0, 0]
    assert step_shape(first).num_new_shapes == 0  # without a record nothing is new


def test_the_simulator_charges_a_new_token_count_once() -> None:
    model = get_model("qwen2.5-0.5b")
    eff = Efficiency(new_shape_overhead_s=0.25)
    cost = CostModel(Deployment(model, get_hardware("cpu-local"), weight_dtype="fp32"), eff)
    executor = SimExecutor(cost)
    batch = SimBatch(requests=[_decoding("a", 99)], num_tokens=[1], num_computed=[99])
    plain = cost.step_time(*step_shape(batch))
    first, second = executor.execute(batch).duration, executor.execute(batch).duration
    assert (first, second) == (pytest.approx(plain + 0.25), pytest.approx(plain))
    # a twin of an engine that already ran this count in its process (`validate`) starts with its kernels built
    assert SimExecutor(cost, warm_token_counts=(7, 1)).execute(batch).duration == pytest.approx(plain)


def test_token_counts_not_run_for_a_while_are_new_again() -> None:
    """oneDNN's kernel cache keeps the most recently run counts only (`KERNEL_CACHE_TOKEN_COUNTS` of them)."""
    seen = SeenTokenCounts(capacity=3)
    assert [seen.first_run(n) for n in (1, 2, 3, 1, 4)] == [1, 1, 1, 0, 1]  # 4 pushes out 2, the least recent
    assert seen.snapshot() == (3, 1, 4)
    assert [seen.first_run(n) for n in (2, 4)] == [1, 0]
    assert SeenTokenCounts(seen.snapshot(), capacity=3).snapshot() == seen.snapshot()
    copy = seen.copy()  # e.g. calibrate's record, started from the process's
    assert copy.first_run(5) == 1 and seen.first_run(5) == 1 and copy.capacity == 3


def test_the_simulator_charges_a_wakeup_to_the_first_step_after_idling_only() -> None:
    cost = CostModel(Deployment(get_model("qwen2.5-0.5b"), get_hardware("cpu-local"), weight_dtype="fp32"),
                     Efficiency(wakeup_overhead_s=0.125, time_scale=2.0))
    executor = SimExecutor(cost)
    batch = SimBatch(requests=[_decoding("a", 99)], num_tokens=[1], num_computed=[99])
    plain = cost.step_time(*step_shape(batch))
    executor.wake()
    woken, after = executor.execute(batch).duration, executor.execute(batch).duration
    assert (woken, after) == (pytest.approx(plain + 2.0 * 0.125), pytest.approx(plain))


def _compiled_timeline(lazy: bool, seed: int, num_blocks: int, max_num_seqs: int, compiled_rows: int,
                       ratio: float = 0.7, backend: str = "torch") -> list[tuple]:
    """30 requests through a twin whose engine runs decode steps of up to `compiled_rows` rows compiled."""
    spec = WorkloadSpec(num_requests=30, input_len="uniform:1:60", output_len="uniform:1:30", vocab_size=50, seed=seed)
    cost = CostModel(Deployment(get_model("qwen2.5-0.5b"), get_hardware("cpu-local"), weight_dtype="fp32"),
                     Efficiency(step_overhead_s=0.02, compiled_overhead_ratio=0.3, gemv_bandwidth_ratio=1.7))
    attention = AttentionConfig(ratio, backend, compiled_decode_rows=compiled_rows)
    return replay(lazy, list(synthetic_requests(spec)), SimExecutor(cost, attention),
                  scheduler_config("sarathi", max_num_batched_tokens=64, max_num_seqs=max_num_seqs),
                  CacheConfig(block_size=4, num_blocks=num_blocks))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), num_blocks=st.integers(40, 200), max_num_seqs=st.integers(1, 12),
       compiled_rows=st.integers(1, 12), ratio=st.sampled_from([0.5, 0.7, 1.0]),
       backend=st.sampled_from(["torch", "flex"]))
def test_lazy_decodes_cost_what_listed_decodes_cost_in_compiled_steps(seed, num_blocks, max_num_seqs, compiled_rows,
                                                                      ratio, backend) -> None:
    """A compiled engine's twin: fast-forwarded runs of the cohort's decodes mark and price the steps that run
    compiled (AttentionConfig.compiled_rows) as the listed rows' steps do."""
    lazy = _compiled_timeline(True, seed, num_blocks, max_num_seqs, compiled_rows, ratio, backend)
    explicit = _compiled_timeline(False, seed, num_blocks, max_num_seqs, compiled_rows, ratio, backend)
    for a, b in zip(lazy, explicit):
        assert a[0] == b[0] and a[3] == b[3]
        assert a[1:3] == pytest.approx(b[1:3], rel=1e-9)


def test_the_compiled_terms_move_a_compiled_engines_timeline() -> None:
    """All 30 requests admitted at once: once their prompts are in, the engine decodes them in compiled steps."""
    compiled, eager = (_compiled_timeline(True, 0, num_blocks=400, max_num_seqs=30, compiled_rows=rows, backend="flex")
                       for rows in (30, 0))
    assert all(c[2] <= e[2] for c, e in zip(compiled, eager))
    assert max(c[2] for c in compiled) < 0.95 * max(e[2] for e in eager)

"""End-to-end simulation: queueing theory as an oracle, determinism, routing, rejection, config errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from batchserve.config import CacheConfig, scheduler_config
from batchserve.request import Request, SamplingParams
from batchserve.sim.cost_model import Efficiency
from batchserve.sim.executor import SimExecutor
from batchserve.sim.hardware import CatalogError
from batchserve.sim.router import RouterConfig
from batchserve.sim.simulate import ClusterConfig, SimResult, build_cluster, resolve, simulate
from batchserve.workload import WorkloadSpec, synthetic_requests


def setup_for(cluster: ClusterConfig = ClusterConfig(), preset: str = "sarathi", cache: CacheConfig = CacheConfig(),
              **sched):
    return resolve(cluster, scheduler_config(preset, **sched), cache, Efficiency())


def hit_rate(result: SimResult) -> float:
    return sum(r.num_cached_tokens for r in result.records) / sum(r.num_prompt_tokens for r in result.records)


def by_id(result: SimResult) -> list:
    return sorted(result.records, key=lambda r: int(r.request_id))


# ---------------------------------------------------------------------------- M/D/1 queue


MD1_SETUP = dict(cache=CacheConfig(enable_prefix_caching=False), max_num_seqs=1)  # one request at a time
MD1_SHAPE = dict(input_len="64", output_len="1")  # one prefill step per request: deterministic service


@pytest.fixture(scope="module")
def md1_service_time() -> float:
    """S: the simulated service time of a lone 64-token prompt with one output token."""
    result = simulate(setup_for(**MD1_SETUP), synthetic_requests(WorkloadSpec(num_requests=1, **MD1_SHAPE)))
    (record,) = result.records
    assert record.queue_s == 0.0
    return record.e2e_s


@pytest.mark.parametrize(("rho", "num_requests"), [(0.5, 40_000), (0.8, 100_000)])
def test_single_server_fifo_queue_matches_md1(md1_service_time: float, rho: float, num_requests: int) -> None:
    """Poisson arrivals, deterministic service, one server: the simulated waits are exactly the
    Lindley recursion of the arrival times, and their mean is Wq = rho / (2 mu (1 - rho)) within 5%.

    (Sampling error of the mean wait at this length is about 1.7% at rho=0.5 and 2.5% at rho=0.8.)
    """
    S = md1_service_time
    spec = WorkloadSpec(num_requests=num_requests, rate=rho / S, seed=0, **MD1_SHAPE)
    result = simulate(setup_for(**MD1_SETUP), synthetic_requests(spec))
    records = by_id(result)
    assert len(records) == num_requests and not result.rejected
    arrival = np.array([r.arrival_time for r in records])
    queue = np.array([r.queue_s for r in records])
    service = np.array([r.finish_time - r.first_scheduled_time for r in records])
    np.testing.assert_allclose(service, S, rtol=1e-9)
    np.testing.assert_allclose([r.ttft_s for r in records], queue + S, rtol=1e-9, atol=1e-12)
    # Lindley: W[0] = 0, W[n+1] = max(0, W[n] + S - (a[n+1] - a[n])).
    lindley = np.zeros(num_requests)
    gaps = np.diff(arrival)
    for n in range(num_requests - 1):
        lindley[n + 1] = max(0.0, lindley[n] + S - gaps[n])
    np.testing.assert_allclose(queue, lindley, rtol=0, atol=1e-9)
    mu = 1.0 / S
    wq = rho / (2 * mu * (1 - rho))
    assert queue.mean() == pytest.approx(wq, rel=0.05)
    assert result.simulated_s == pytest.approx(max(r.finish_time for r in records))


def test_a_request_that_wakes_an_idle_server_pays_the_wakeup_once(md1_service_time: float) -> None:
    """The M/D/1 queue again, with `wakeup_overhead_s` = w: a request arriving to an empty server is served in
    S + w, one arriving while another is served in S (Lindley's recursion with that service time)."""
    S, w = md1_service_time, 0.4 * md1_service_time
    setup = resolve(ClusterConfig(), scheduler_config("sarathi", max_num_seqs=1),
                    MD1_SETUP["cache"], Efficiency(wakeup_overhead_s=w))
    spec = WorkloadSpec(num_requests=2000, rate=0.6 / S, seed=1, **MD1_SHAPE)
    records = by_id(simulate(setup, synthetic_requests(spec)))
    finish, woke = 0.0, 0
    for r in records:
        idle = r.arrival_time > finish
        woke += idle
        finish = max(r.arrival_time, finish) + S + w * idle
        assert r.finish_time == pytest.approx(finish, rel=1e-9)
    assert 0 < woke < len(records)  # both kinds of arrival occurred


# ---------------------------------------------------------------------------- determinism and accounting


SHARED_SPEC = dict(num_requests=400, rate=60.0, input_len="lognormal:256:0.6", output_len="lognormal:64:0.6",
                   num_prefix_groups=4, prefix_len=128)


def run_shared(seed: int, **cluster) -> SimResult:
    """A shared-prefix workload on small KV caches (150 blocks a replica), so requests preempt."""
    setup = setup_for(ClusterConfig(**cluster), cache=CacheConfig(num_blocks=150))
    return simulate(setup, synthetic_requests(WorkloadSpec(seed=seed, **SHARED_SPEC)))


def fingerprint(result: SimResult) -> list:
    return [(r.request_id, r.replica, r.arrival_time, r.first_scheduled_time, r.first_token_time, r.finish_time,
             r.num_output_tokens, r.num_cached_tokens, r.num_preemptions) for r in result.records]


def test_same_seed_gives_identical_results() -> None:
    a, b = run_shared(7, replicas=2, router="least-loaded"), run_shared(7, replicas=2, router="least-loaded")
    assert fingerprint(a) == fingerprint(b)
    assert sum(r.num_preemptions for r in a.records) > 0
    assert (a.num_steps, a.num_iterations, a.simulated_s) == (b.num_steps, b.num_iterations, b.simulated_s)
    assert fingerprint(run_shared(8, replicas=2, router="least-loaded")) != fingerprint(a)


def test_every_request_finishes_with_its_output_length() -> None:
    spec = WorkloadSpec(seed=3, **SHARED_SPEC)
    wanted = {r.request_id: (r.num_prompt_tokens, r.sampling_params.max_tokens) for r in synthetic_requests(spec)}
    result = run_shared(3)
    assert not result.rejected
    assert {r.request_id: (r.num_prompt_tokens, r.num_output_tokens) for r in result.records} == wanted
    assert Counter(r.finish_reason for r in result.records) == {"length": len(wanted)}
    for r in result.records:
        assert r.arrival_time <= r.first_scheduled_time < r.first_token_time <= r.finish_time
    assert result.num_iterations < result.num_steps  # decode runs were fast-forwarded


class StepByStepExecutor(SimExecutor):
    def max_decode_steps(self, batch, horizon_s, limit):
        return 1


def test_fast_forward_matches_step_by_step_simulation() -> None:
    """Fast-forwarding decode runs changes no timing (beyond float rounding of summed step times)."""
    setup = setup_for(ClusterConfig(replicas=2, router="round-robin"), cache=CacheConfig(num_blocks=150))
    spec = WorkloadSpec(seed=5, **SHARED_SPEC)
    fast = build_cluster(setup).run(synthetic_requests(spec))
    slow_cluster = build_cluster(setup)
    for engine in slow_cluster.replicas:
        engine.executor = StepByStepExecutor(engine.executor.cost_model)
    slow = slow_cluster.run(synthetic_requests(spec))
    assert slow.num_iterations == slow.num_steps == fast.num_steps
    assert fast.num_iterations < fast.num_steps / 2
    f, s = by_id(fast), by_id(slow)
    assert sum(r.num_preemptions for r in f) > 0
    assert [(r.request_id, r.replica, r.num_output_tokens, r.num_cached_tokens, r.num_preemptions) for r in f] == [
        (r.request_id, r.replica, r.num_output_tokens, r.num_cached_tokens, r.num_preemptions) for r in s]
    for name in ("first_scheduled_time", "first_token_time", "finish_time"):
        np.testing.assert_allclose([getattr(r, name) for r in f], [getattr(r, name) for r in s], rtol=1e-9)


# ---------------------------------------------------------------------------- routers


def test_round_robin_splits_requests_evenly() -> None:
    result = run_shared(1, replicas=2, router="round-robin")
    assert Counter(r.replica for r in result.records) == {0: 200, 1: 200}
    assert all(r.replica == int(r.request_id) % 2 for r in result.records)


def test_prefix_affinity_beats_round_robin_on_shared_prefixes() -> None:
    """4 prefix groups of 512 tokens, 2 replicas whose caches (100 blocks = 1600 tokens) hold about two
    prefixes each: keeping each group on one replica keeps its prefix cached."""
    spec = dict(num_requests=1000, rate=10.0, input_len="uniform:16:64", output_len="uniform:8:32",
                num_prefix_groups=4, prefix_len=512, seed=1)
    rates = {}
    for router in ("round-robin", "prefix-affinity"):
        setup = setup_for(ClusterConfig(replicas=2, router=router), cache=CacheConfig(num_blocks=100))
        result = simulate(setup, synthetic_requests(WorkloadSpec(**spec)))
        assert len(result.records) == 1000
        rates[router] = hit_rate(result)
    assert rates["prefix-affinity"] > rates["round-robin"] + 0.1
    assert rates["prefix-affinity"] > 0.8


def test_prefix_caching_saves_prefill_time() -> None:
    spec = WorkloadSpec(num_requests=300, rate=30.0, input_len="32", output_len="8", num_prefix_groups=2,
                        prefix_len=1024, seed=2)
    on = simulate(setup_for(), synthetic_requests(spec))
    off = simulate(setup_for(cache=CacheConfig(enable_prefix_caching=False)), synthetic_requests(spec))
    assert hit_rate(off) == 0.0
    assert hit_rate(on) > 0.9
    assert np.mean([r.ttft_s for r in on.records]) < np.mean([r.ttft_s for r in off.records])


# ---------------------------------------------------------------------------- rejection


def _req(rid: str, prompt_len: int, max_tokens: int, t: float) -> Request:
    return Request(rid, [7] * prompt_len, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=t)


def test_too_long_requests_are_rejected_with_a_reason() -> None:
    setup = setup_for()
    max_len = setup.deployment.model.max_model_len
    requests = [_req("ok-1", 100, 10, 0.0), _req("too-long", 10, max_len, 0.1), _req("ok-2", 100, 10, 0.2)]
    result = simulate(setup, requests)
    assert sorted(r.request_id for r in result.records) == ["ok-1", "ok-2"]
    [(rid, why)] = result.rejected
    assert rid == "too-long"
    assert "max_model_len" in why and str(max_len) in why


def test_requests_larger_than_the_kv_cache_are_rejected() -> None:
    setup = setup_for(cache=CacheConfig(num_blocks=4, block_size=16))  # 64 tokens of KV
    result = simulate(setup, [_req("fits", 40, 20, 0.0), _req("huge", 60, 10, 0.0)])
    assert [r.request_id for r in result.records] == ["fits"]
    [(rid, why)] = result.rejected
    assert rid == "huge" and "KV cache" in why


def test_whole_prompt_presets_reject_requests_beyond_one_step() -> None:
    setup = setup_for(preset="vllm", max_num_batched_tokens=256, max_num_seqs=8)
    result = simulate(setup, [_req("small", 100, 10, 0.0), _req("big", 250, 10, 0.0)])
    assert [r.request_id for r in result.records] == ["small"]
    [(rid, why)] = result.rejected
    assert rid == "big" and "chunked prefill" in why


def test_arrivals_out_of_order_are_an_error() -> None:
    with pytest.raises(ValueError, match="before the previous one"):
        simulate(setup_for(), [_req("a", 10, 2, 1.0), _req("b", 10, 2, 0.5)])


# ---------------------------------------------------------------------------- configuration errors


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(CatalogError, match=r"unknown model 'llama-9'.*valid names:.*llama-3\.1-8b.*mixtral-8x7b"):
        setup_for(ClusterConfig(model="llama-9"))


def test_unknown_hardware_lists_valid_names() -> None:
    with pytest.raises(CatalogError, match=r"unknown hardware 'h1000'.*valid names:.*h100-sxm.*a100-80gb"):
        setup_for(ClusterConfig(hardware="h1000"))


def test_unknown_router_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="round-robin, least-loaded, prefix-affinity"):
        ClusterConfig(router="random")


def test_model_too_big_for_the_hardware_is_reported_at_resolve() -> None:
    with pytest.raises(ValueError, match="GiB missing"):
        setup_for(ClusterConfig(model="llama-3.1-70b", hardware="h100-sxm", tp=1))


def test_edf_serves_tight_ttft_targets_first(tmp_path) -> None:
    """Past saturation, requests with a tight per-request TTFT target (trace field `ttft_slo`) wait
    less under `edf` than under `fcfs`, and the loose ones pay for it."""
    import json

    from batchserve.config import CacheConfig, scheduler_config
    from batchserve.sim.simulate import ClusterConfig, resolve, simulate
    from batchserve.workload import trace_requests

    trace = tmp_path / "trace.jsonl"
    with trace.open("w") as f:
        for i in range(800):
            tight = i % 2 == 0
            f.write(json.dumps({"arrival_time": i * 0.02, "prompt_tokens": 1500, "output_tokens": 64,
                                "ttft_slo": 0.5 if tight else 30.0, "request_id": f"{'t' if tight else 'l'}{i}"}) + "\n")

    def mean_ttft(policy: str) -> dict[str, float]:
        setup = resolve(ClusterConfig(), scheduler_config("sarathi", policy=policy), CacheConfig())
        records = simulate(setup, trace_requests(trace)).records
        by_class: dict[str, list[float]] = {"t": [], "l": []}
        for r in records:
            by_class[r.request_id[0]].append(r.ttft_s)
        return {k: sum(v) / len(v) for k, v in by_class.items()}

    fcfs, edf = mean_ttft("fcfs"), mean_ttft("edf")
    assert edf["t"] < 0.5 * fcfs["t"]
    assert edf["l"] > fcfs["l"]


def test_router_config_reaches_the_simulated_router():
    config = RouterConfig(balance_ratio=1.1, balance_slack_tokens=64)
    setup = resolve(ClusterConfig(model="qwen2.5-0.5b", replicas=2, router="prefix-affinity"),
                    scheduler_config("sarathi"), CacheConfig(), router=config)
    assert build_cluster(setup).router.affinity.config == config
    assert setup.to_dict()["router_config"] == {"balance_ratio": 1.1, "balance_slack_tokens": 64}


def test_the_engines_attention_grouping_reaches_the_simulated_executor():
    from batchserve.attention_layout import AttentionConfig

    attention = AttentionConfig(decode_bucket_ratio=0.9)
    setup = resolve(ClusterConfig(model="qwen2.5-0.5b"), scheduler_config("sarathi"), CacheConfig(),
                    attention=attention)
    assert build_cluster(setup).replicas[0].executor.attention == attention


def test_constrained_requests_cost_their_grammar_overhead_in_the_simulation():
    from batchserve.request import StructuredOutputsParams

    def run(constraint, overhead: float) -> float:
        setup = resolve(ClusterConfig(model="qwen2.5-0.5b"), scheduler_config("sarathi"), CacheConfig(),
                        efficiency=Efficiency(structured_overhead_s=overhead))
        params = SamplingParams(max_tokens=20, ignore_eos=True, structured_outputs=constraint)
        reqs = [Request(f"r{i}", list(range(1, 33)), params, arrival_time=0.0) for i in range(8)]
        return simulate(setup, reqs).records[-1].finish_time

    grammar = StructuredOutputsParams(regex="[a-z]+")
    base = run(None, 0.01)
    assert run(grammar, 0.0) == pytest.approx(base, rel=1e-6)  # kept out of the lazy cohort: same time at 0 cost
    # 8 rows sample in each of 20 steps (the prompt's step included), each at 10 ms more
    assert run(grammar, 0.01) - base == pytest.approx(20 * 8 * 0.01, rel=0.05)

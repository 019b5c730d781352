"""Preemption: which running request is the victim, and that preemption never loses or livelocks a request."""

from __future__ import annotations

import pytest

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import Scheduler, StepResult
from batchserve.request import Request, RequestStatus, SamplingParams
from batchserve.sim.scheduler import SimScheduler


def make_scheduler(num_blocks: int, policy: str = "fcfs", lazy: bool = False, **overrides) -> Scheduler:
    overrides.setdefault("max_num_seqs", 4)
    overrides.setdefault("watermark", 0.0)
    cfg = scheduler_config("sarathi", policy=policy, **overrides)
    cache = CacheConfig(block_size=1, num_blocks=num_blocks, enable_prefix_caching=False)
    return (SimScheduler if lazy else Scheduler)(cfg, cache)


def req(rid: str, prompt_len: int, max_tokens: int, arrival: float = 0.0, priority: int = 0,
        deadline: float | None = None) -> Request:
    return Request(rid, [hash(rid) % 1000] * prompt_len, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   arrival_time=arrival, priority=priority, deadline=deadline)


def run(sched: Scheduler, max_steps: int = 1000) -> list[Request]:
    """Step until done; returns every request preempted along the way, in order."""
    preempted = []
    for k in range(max_steps):
        if not sched.has_unfinished():
            return preempted
        batch = sched.schedule(float(k))
        preempted += batch.preempted
        sched.update(batch, StepResult(1.0), float(k))
    raise AssertionError(f"requests still unfinished after {max_steps} steps: livelock")


def first_victim(policy: str, a: Request, b: Request, lazy: bool = False) -> Request:
    """a and b (1-token prompts, 5 outputs) both decode in a 7-block pool: the pool runs dry at the 4th step."""
    sched = make_scheduler(num_blocks=7, policy=policy, lazy=lazy)
    sched.add_request(a)
    sched.add_request(b)
    preempted = run(sched)
    assert a.num_output_tokens == b.num_output_tokens == 5
    assert a.status == b.status == RequestStatus.FINISHED_LENGTH
    assert sched.kv.num_free_blocks == 7
    return preempted[0]


@pytest.mark.parametrize("lazy", [False, True])
def test_fcfs_preempts_the_latest_arrival(lazy: bool) -> None:
    late, early = req("late", 1, 5, arrival=1.0), req("early", 1, 5, arrival=0.0)
    assert first_victim("fcfs", late, early, lazy) is late
    assert first_victim("fcfs", req("early", 1, 5, 0.0), req("late", 1, 5, 1.0), lazy).request_id == "late"


def test_priority_preempts_the_largest_priority_value() -> None:
    low, high = req("low", 1, 5, arrival=0.0, priority=5), req("high", 1, 5, arrival=1.0, priority=0)
    assert first_victim("priority", low, high) is low


def test_edf_preempts_the_latest_deadline() -> None:
    relaxed = req("relaxed", 1, 5, arrival=0.0, deadline=100.0)
    urgent = req("urgent", 1, 5, arrival=1.0, deadline=10.0)
    assert first_victim("edf", relaxed, urgent) is relaxed
    no_deadline = req("none", 1, 5, arrival=0.0)
    assert first_victim("edf", no_deadline, req("due", 1, 5, arrival=1.0, deadline=50.0)) is no_deadline


def test_a_preempted_request_keeps_its_outputs_and_finishes_exactly() -> None:
    sched = make_scheduler(num_blocks=7)
    a, b = req("a", 1, 5, arrival=0.0), req("b", 1, 5, arrival=1.0)
    sched.add_request(a)
    sched.add_request(b)
    preempted = run(sched)
    assert preempted and all(r is b for r in preempted)
    assert b.num_preemptions == len(preempted)
    assert a.num_preemptions == 0
    assert b.num_output_tokens == 5
    assert a.finish_time < b.finish_time


def test_fcfs_with_equal_arrivals_preempts_the_last_admitted() -> None:
    first, second = req("first", 1, 5, arrival=0.0), req("second", 1, 5, arrival=0.0)
    assert first_victim("fcfs", first, second) is second  # actual: first


def test_equal_arrivals_with_prefill_threshold_finish() -> None:
    """Minimal case found by the property tests: 2 requests at t=0, 7 one-token blocks, budget 6, chunks of 1."""
    sched = make_scheduler(num_blocks=7, max_num_batched_tokens=6, max_num_seqs=2, long_prefill_token_threshold=1)
    a, b = req("a", 4, 3), req("b", 5, 2)
    sched.add_request(a)
    sched.add_request(b)
    run(sched, max_steps=1000)  # actual: never finishes
    assert a.num_output_tokens == 3 and b.num_output_tokens == 2


def test_distinct_arrivals_with_prefill_threshold_finish() -> None:
    """The same requests 1 ms apart finish: the earliest arrival is never a victim while others run."""
    sched = make_scheduler(num_blocks=7, max_num_batched_tokens=6, max_num_seqs=2, long_prefill_token_threshold=1)
    a, b = req("a", 4, 3, arrival=0.0), req("b", 5, 2, arrival=0.001)
    sched.add_request(a)
    sched.add_request(b)
    run(sched)
    assert a.num_output_tokens == 3 and b.num_output_tokens == 2

"""The scheduler admits a request only if its adapter can be resident this step (no torch: a real Scheduler)."""

from __future__ import annotations

from dataclasses import replace

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import Scheduler, StepResult
from batchserve.lora import LoRAAdmission
from batchserve.request import Request, SamplingParams


def req(rid: str, adapter: int | None, max_tokens: int = 2) -> Request:
    return Request(rid, [1, 2, 3], SamplingParams(max_tokens=max_tokens, ignore_eos=True), adapter_id=adapter)


def test_a_third_adapter_waits_for_a_slot_while_base_and_resident_adapters_go_on() -> None:
    sched = Scheduler(scheduler_config("sarathi"), CacheConfig(block_size=4, num_blocks=64))
    sched.admission_check = LoRAAdmission(max_loras=2)
    a1, b, a3 = req("a1", 1, max_tokens=1), req("b", 2, max_tokens=3), req("a3", 3)
    for r in (a1, req("base", None), b, req("b-again", 2), a3, req("late-base", None)):
        sched.add_request(r)
    batch = sched.schedule()
    # a3 waits (adapters 1 and 2 hold both slots); the request behind it is not held up by it
    assert [r.request_id for r in batch.requests] == ["a1", "base", "b", "b-again", "late-base"]
    assert [r.request_id for r in sched.waiting] == ["a3"]
    sched.update(batch, StepResult(1.0), 0.0)  # a1 finishes: adapter 1 has no running request left
    batch = sched.schedule()
    assert [r.request_id for r in batch.requests][-1] == "a3"
    assert len({r.adapter_id for r in sched.running} - {None}) == 2


def test_without_lookahead_a_refused_request_blocks_the_queue_and_skipped_ones_keep_their_place() -> None:
    config = replace(scheduler_config("sarathi"), admission_lookahead=0)
    sched = Scheduler(config, CacheConfig(block_size=4, num_blocks=64))
    sched.admission_check = LoRAAdmission(max_loras=1)
    for r in (req("a", 1, max_tokens=1), req("b", 2), req("late-base", None)):
        sched.add_request(r)
    assert [r.request_id for r in sched.schedule().requests] == ["a"]  # head-of-line: b blocks late-base

    sched = Scheduler(replace(config, admission_lookahead=1), CacheConfig(block_size=4, num_blocks=64))
    sched.admission_check = LoRAAdmission(max_loras=1)
    for r in (req("a", 1, max_tokens=1), req("b", 2), req("c", 3), req("late-base", None)):
        sched.add_request(r)
    # one refused request (b) may be stepped over; the second (c) ends the look
    assert [r.request_id for r in sched.schedule().requests] == ["a"]
    assert sorted(r.request_id for r in sched.waiting) == ["b", "c", "late-base"]
    assert sched.waiting.peek().request_id == "b"  # fcfs order is kept for the next step

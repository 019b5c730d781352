"""The scheduler admits a request only if its adapter can be resident this step (no torch: a real Scheduler)."""

from __future__ import annotations

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
    # head of line: a3 waits (adapters 1 and 2 hold both slots), and so do the requests behind it
    assert [r.request_id for r in batch.requests] == ["a1", "base", "b", "b-again"]
    sched.update(batch, StepResult(1.0), 0.0)  # a1 finishes: adapter 1 has no running request left
    batch = sched.schedule()
    assert {r.request_id for r in batch.requests} >= {"a3", "late-base"}
    assert len({r.adapter_id for r in sched.running} - {None}) == 2

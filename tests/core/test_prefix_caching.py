"""Prefix caching through the scheduler: which blocks a request reuses, and what it still computes."""

from __future__ import annotations

import pytest

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import ScheduledBatch, Scheduler, StepResult
from batchserve.request import Request, RequestStatus, SamplingParams
from batchserve.sim.scheduler import SimScheduler

BS = 16
SHARED = list(range(1000, 1000 + 3 * BS))  # a 3-block prefix


def make_scheduler(num_blocks: int = 64, caching: bool = True, block_size: int = BS, lazy: bool = False,
                   **overrides) -> Scheduler:
    """A sarathi scheduler; `lazy`: the simulator's, which tracks steady decodes in a DecodeCohort."""
    overrides.setdefault("max_num_seqs", 8)
    cache = CacheConfig(block_size, num_blocks, caching)
    return (SimScheduler if lazy else Scheduler)(scheduler_config("sarathi", **overrides), cache)


def req(rid: str, prompt: list[int], max_tokens: int = 4, arrival: float = 0.0, adapter=None) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   arrival_time=arrival, adapter_id=adapter)


def step(sched: Scheduler, now: float = 0.0) -> ScheduledBatch:
    """One schedule + update with a one-second step and synthetic tokens."""
    batch = sched.schedule(now)
    sched.update(batch, StepResult(1.0), now)
    return batch


def scheduled(batch: ScheduledBatch, r: Request) -> tuple[int, int]:
    """(num_computed, num_tokens) the batch gives request r."""
    i = next(i for i, x in enumerate(batch.requests) if x is r)
    return batch.num_computed[i], batch.num_tokens[i]


def run_to_completion(sched: Scheduler, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return
        step(sched)
    raise AssertionError("requests did not finish")


def ref(sched: Scheduler, block_id: int) -> int:
    return sched.kv.pool.blocks[block_id].ref_cnt


@pytest.mark.parametrize("lazy", [False, True])
def test_shared_three_block_prefix_is_reused_and_only_the_rest_computed(lazy: bool) -> None:
    sched = make_scheduler(lazy=lazy)
    a = req("a", SHARED + [1, 2, 3, 4, 5])
    sched.add_request(a)
    step(sched)  # a's whole prompt: its 3 full blocks are now cached
    assert a.num_cached_tokens == 0
    b = req("b", SHARED + [9, 8, 7, 6, 5])
    sched.add_request(b)
    batch = sched.schedule(1.0)
    assert scheduled(batch, b) == (48, len(b.prompt_token_ids) - 48)
    assert b.num_cached_tokens == 48
    assert b.block_ids[:3] == a.block_ids[:3]
    assert [ref(sched, x) for x in b.block_ids[:3]] == [2, 2, 2]
    assert b.block_ids[3] != a.block_ids[3] and ref(sched, b.block_ids[3]) == 1
    assert len(b.block_ids) == 4
    assert (sched.kv.num_queries, sched.kv.num_hits) == (2 * 53, 48)
    sched.update(batch, StepResult(1.0), 1.0)
    shared_ids = a.block_ids[:3]
    # Once a finishes, b alone holds the shared blocks; once both finish they stay cached, unreferenced.
    while not a.is_finished:
        step(sched)
    assert [ref(sched, x) for x in shared_ids] == [1, 1, 1]
    run_to_completion(sched)
    assert [ref(sched, x) for x in shared_ids] == [0, 0, 0]
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    c = req("c", SHARED + [4])
    sched.add_request(c)
    batch = sched.schedule(9.0)
    assert scheduled(batch, c) == (48, 1)
    assert c.block_ids[:3] == shared_ids
    assert sched.kv.num_free_blocks == sched.kv.num_blocks - 4


def test_different_adapters_never_share_blocks() -> None:
    sched = make_scheduler()
    a = req("a", SHARED + [1], adapter="lora-1")
    sched.add_request(a)
    step(sched)
    b = req("b", SHARED + [1], adapter="lora-2")
    base = req("base", SHARED + [1])  # no adapter is a distinct "adapter" too
    same = req("same", SHARED + [1], adapter="lora-1")
    for r in (b, base, same):
        sched.add_request(r)
    batch = sched.schedule(1.0)
    assert scheduled(batch, b) == (0, 49) and b.num_cached_tokens == 0
    assert scheduled(batch, base) == (0, 49) and base.num_cached_tokens == 0
    assert scheduled(batch, same) == (48, 1) and same.num_cached_tokens == 48
    assert not set(b.block_ids) & set(a.block_ids)
    assert not set(base.block_ids) & set(a.block_ids)
    assert same.block_ids[:3] == a.block_ids[:3]


@pytest.mark.parametrize(("prompt_len", "expect_cached"), [(48, 32), (49, 48), (47, 32), (17, 16), (16, 0), (1, 0)])
def test_fully_cached_prompt_still_computes_at_least_one_token(prompt_len: int, expect_cached: int) -> None:
    """Only full blocks before the last prompt token can hit: the last token's logits must be computed."""
    sched = make_scheduler()
    prompt = (SHARED + [7])[:prompt_len]
    first = req("first", list(prompt))
    sched.add_request(first)
    run_to_completion(sched)
    again = req("again", list(prompt), max_tokens=2)
    sched.add_request(again)
    batch = sched.schedule(5.0)
    assert scheduled(batch, again) == (expect_cached, prompt_len - expect_cached)
    assert again.num_cached_tokens == expect_cached
    sched.update(batch, StepResult(1.0), 5.0)
    assert again.num_output_tokens == 1  # its prompt was completed in that one step
    run_to_completion(sched)
    assert again.num_output_tokens == 2


def _preemption_scenario(caching: bool, lazy: bool):
    """Two 8-token prompts in a 5-block pool of 4-token blocks: b is preempted at the second step.

    Step 1 runs both prompts (4 blocks). Step 2: a's first decode takes the last free block, so b
    (the later arrival, the fcfs victim) is preempted, its 2 full blocks freed tail first but still
    cached. b waits while a finishes (b would need 3 blocks, 2 are free), then is readmitted.
    """
    sched = make_scheduler(num_blocks=5, caching=caching, block_size=4, lazy=lazy)
    a = req("a", [1] * 8, max_tokens=4, arrival=0.0)
    b = req("b", [2] * 8, max_tokens=4, arrival=1.0)
    sched.add_request(a)
    sched.add_request(b)
    step(sched, 0.0)
    b_blocks = list(b.block_ids)
    batch = step(sched, 1.0)
    assert batch.preempted == [b] and b.status == RequestStatus.PREEMPTED
    assert b.num_computed_tokens == 0 and b.block_ids == []
    assert b.num_tokens == 9  # its first output survives the preemption
    for t in (2.0, 3.0):
        batch = step(sched, t)
        assert b not in batch.requests
    assert a.is_finished and sched.kv.num_free_blocks == 5
    batch = sched.schedule(4.0)
    return sched, b, b_blocks, batch


@pytest.mark.parametrize("lazy", [False, True])
def test_preempted_request_recomputes_and_hits_its_own_cached_blocks(lazy: bool) -> None:
    sched, b, b_blocks, batch = _preemption_scenario(caching=True, lazy=lazy)
    assert scheduled(batch, b) == (8, 1)  # 8 tokens from its own blocks, 1 (its sampled token) to compute
    assert b.block_ids[:2] == b_blocks
    assert b.num_preemptions == 1
    assert b.num_cached_tokens == 0  # counted at first admission only
    assert sched.kv.num_hits == 0
    sched.update(batch, StepResult(1.0), 4.0)
    run_to_completion(sched)
    assert b.num_output_tokens == 4 and b.status == RequestStatus.FINISHED_LENGTH


@pytest.mark.parametrize("lazy", [False, True])
def test_preempted_request_without_prefix_caching_recomputes_everything(lazy: bool) -> None:
    sched, b, _, batch = _preemption_scenario(caching=False, lazy=lazy)
    assert scheduled(batch, b) == (0, 9)
    sched.update(batch, StepResult(1.0), 4.0)
    run_to_completion(sched)
    assert b.num_output_tokens == 4


def test_disabled_prefix_caching_never_hits() -> None:
    sched = make_scheduler(caching=False)
    a = req("a", SHARED + [1])
    sched.add_request(a)
    run_to_completion(sched)
    assert sched.kv.pool.num_cached_blocks == 0
    b = req("b", SHARED + [1])
    sched.add_request(b)
    batch = sched.schedule(3.0)
    assert scheduled(batch, b) == (0, 49)
    assert b.num_cached_tokens == 0
    assert sched.kv.count_cached_tokens(b) == 0
    assert sched.kv.num_hits == 0


@pytest.mark.parametrize(("filler_blocks", "expect_hit"), [(5, 48), (6, 32), (7, 16), (8, 0)])
def test_eviction_under_pressure_evicts_the_tail_first_then_misses(filler_blocks: int, expect_hit: int) -> None:
    """After `a` (3 cached full blocks + 1 partial) finishes in an 8-block pool, a filler request
    needing `filler_blocks` blocks takes the never-used blocks, then a's partial block, then a's
    cached blocks tail first; a later request sharing a's prefix hits only what survived."""
    sched = make_scheduler(num_blocks=8)
    a = req("a", SHARED + [1, 2, 3, 4, 5], max_tokens=1)
    sched.add_request(a)
    run_to_completion(sched)
    assert sched.kv.pool.num_cached_blocks == 3
    filler = req("filler", list(range(5000, 5000 + filler_blocks * BS - 1)), max_tokens=1)
    sched.add_request(filler)
    run_to_completion(sched)
    assert sched.kv.pool.num_evictions == max(0, filler_blocks - 5)
    b = req("b", SHARED + [6])
    sched.add_request(b)
    batch = sched.schedule(9.0)
    assert scheduled(batch, b) == (expect_hit, 49 - expect_hit)
    assert b.num_cached_tokens == expect_hit


def test_lpm_admits_the_longest_cached_prefix_first() -> None:
    sched = make_scheduler(policy="lpm", max_num_seqs=1)
    warm = req("warm", SHARED + [1], max_tokens=1)
    sched.add_request(warm)
    run_to_completion(sched)
    cold = req("cold", list(range(7000, 7049)), arrival=1.0)
    hot = req("hot", SHARED + [2], arrival=2.0)  # arrives later, but has 48 cached tokens
    sched.add_request(cold)
    sched.add_request(hot)
    batch = sched.schedule(3.0)
    assert batch.requests == [hot]
    assert scheduled(batch, hot) == (48, 1)


def test_fcfs_ignores_cached_prefix_length() -> None:
    sched = make_scheduler(policy="fcfs", max_num_seqs=1)
    warm = req("warm", SHARED + [1], max_tokens=1)
    sched.add_request(warm)
    run_to_completion(sched)
    cold = req("cold", list(range(7000, 7049)), arrival=1.0)
    hot = req("hot", SHARED + [2], arrival=2.0)
    sched.add_request(cold)
    sched.add_request(hot)
    assert sched.schedule(3.0).requests == [cold]


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("budget", [32, 17])
def test_prompt_blocks_are_shared_while_the_request_decodes(budget: int, lazy: bool) -> None:
    """A running request's full prompt blocks are in the prefix cache as soon as its prompt is computed."""
    sched = make_scheduler(lazy=lazy, max_num_batched_tokens=budget)
    a = req("a", list(range(32)), max_tokens=10)
    sched.add_request(a)
    while a.num_output_tokens < 1:
        step(sched)
    step(sched)  # a is decoding
    b = req("b", list(range(32)) + [99], max_tokens=1)
    sched.add_request(b)
    batch = sched.schedule(5.0)
    assert scheduled(batch, b) == (32, 1)


@pytest.mark.parametrize("lazy", [False, True])
def test_prompt_completed_by_a_one_token_chunk_shares_its_last_block(lazy: bool) -> None:
    """Budget 31 splits a 32-token prompt into chunks of 31 and 1 token; both of its blocks must be shared."""
    sched = make_scheduler(lazy=lazy, max_num_batched_tokens=31)
    a = req("a", list(range(32)), max_tokens=10)
    sched.add_request(a)
    assert scheduled(step(sched), a) == (0, 31)
    assert scheduled(step(sched), a) == (31, 1)
    assert a.num_output_tokens == 1
    b = req("b", list(range(32)) + [99], max_tokens=1)
    sched.add_request(b)
    batch = sched.schedule(5.0)
    assert scheduled(batch, b) == (32, 1)  # actual: (16, 17), block 1 was never committed

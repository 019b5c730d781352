"""KV accounting under speculation, on random workloads (no model: a fake executor accepts random prefixes).

After every step: each running request holds exactly the blocks its accepted (computed) tokens need,
a block's ref count is the number of requests holding it, the pool's used blocks are exactly those
held, and every prefix-cache hash a request's block carries is the hash of its accepted tokens (never
of a rejected draft). At the end every block is free. Tiny pools force preemption and draft fallback.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import ScheduledBatch, Scheduler, StepResult
from batchserve.engine import Engine
from batchserve.request import Request, RequestStatus, SamplingParams
from batchserve.spec_decode import SpeculativeConfig, Speculator

ALPHABET = 4  # few token values: prompts share prefixes and stop tokens turn up


class RandomProposer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def propose(self, requests: list[Request], k: list[int]) -> list[list[int]]:
        return [[self.rng.randrange(ALPHABET) for _ in range(self.rng.randint(0, n))] for n in k]

    def release(self, request: Request) -> None:
        pass


class RandomVerifier:
    """Accepts a random prefix of each draft and adds one token; plain rows sample one token."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def execute(self, batch: ScheduledBatch) -> StepResult:
        rng = self.rng
        sampled = []
        for req, n, c in zip(batch.requests, batch.num_tokens, batch.num_computed):
            draft = batch.spec_token_ids.get(req)
            if draft is not None:
                assert n == 1 + len(draft) and c + 1 == req.num_tokens
                sampled.append(draft[: rng.randint(0, len(draft))] + [rng.randrange(ALPHABET)])
            else:
                sampled.append([rng.randrange(ALPHABET)] if c + n == req.num_tokens else [])
        return StepResult(1.0, sampled)


def check_kv(scheduler: Scheduler, requests: list[Request]) -> None:
    kv, bs = scheduler.kv, scheduler.kv.block_size
    pool = kv.pool
    holders: Counter[int] = Counter()
    for req in requests:
        if req.status != RequestStatus.RUNNING:
            assert req.block_ids == []
            continue
        assert req.num_computed_tokens < req.num_tokens
        assert len(req.block_ids) == kv.blocks_needed(req.num_computed_tokens), req
        holders.update(req.block_ids)
        fresh = Request("probe", req.tokens(0, req.num_tokens), req.sampling_params, adapter_id=req.adapter_id)
        hashes = kv.hash_blocks(fresh, req.num_computed_tokens // bs)
        for j, bid in enumerate(req.block_ids[: req.num_computed_tokens // bs]):
            assert pool.blocks[bid].block_hash in (None, hashes[j])
    assert kv.num_blocks - kv.num_free_blocks == len(holders)
    for bid, count in holders.items():
        assert pool.blocks[bid].ref_cnt == count


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    num_requests=st.integers(1, 12),
    num_blocks=st.integers(6, 40),
    block_size=st.sampled_from([1, 2, 4]),
    k=st.integers(1, 6),
    budget=st.integers(12, 48),
)
def test_blocks_cover_accepted_tokens_after_every_step(
    seed: int, num_requests: int, num_blocks: int, block_size: int, k: int, budget: int
) -> None:
    rng = random.Random(seed)
    scheduler = Scheduler(scheduler_config("sarathi", max_num_batched_tokens=budget, max_num_seqs=8),
                          CacheConfig(block_size, num_blocks, enable_prefix_caching=True))
    scheduler.speculator = Speculator(SpeculativeConfig(num_speculative_tokens=k, max_batch_size=8), RandomProposer(rng))
    engine = Engine(scheduler, RandomVerifier(rng))
    requests = []
    for i in range(num_requests):
        prompt = [rng.randrange(ALPHABET) for _ in range(rng.randint(1, 10))]
        stop = [rng.randrange(ALPHABET)] if rng.random() < 0.3 else []
        params = SamplingParams(max_tokens=rng.randint(1, 12), stop_token_ids=stop, ignore_eos=True)
        if len(prompt) + params.max_tokens <= num_blocks * block_size:
            requests.append(Request(str(i), prompt, params))
            engine.add_request(requests[-1])
    for _ in range(2000):
        if not engine.has_unfinished():
            break
        engine.step()
        check_kv(scheduler, requests)
    assert all(r.is_finished for r in requests)
    for r in requests:
        assert r.num_output_tokens == r.sampling_params.max_tokens or r.output_token_ids[-1] in r.sampling_params.stop_token_ids
    assert scheduler.kv.num_free_blocks == num_blocks
    assert engine.outstanding_tokens == 0  # rejected draft positions are not progress

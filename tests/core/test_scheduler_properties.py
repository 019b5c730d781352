"""Scheduler contract (DESIGN.md "Scheduler contract") checked on random workloads, after every step.

An Engine runs the real Scheduler with a fake executor whose step time depends only on the batch
(integer durations, so sums of step times are exact in floating point). Random workloads use tiny
KV pools that force preemption, shared prompt prefixes (with a tiny token alphabet, so prompts
often collide), every preset and policy, random priorities, deadlines and adapters, and
arrivals spread over time so that `until` horizons cut fast-forwarded decode runs. The contract
is checked for the core Scheduler (every request explicit, as a real engine drives it) and for
the simulator's SimScheduler under a SimEngine (decoding requests live in a cohort and runs of
decode steps are fast-forwarded), which must also make exactly the core's decisions.

The checks, by where they run:
- `CheckedScheduler.schedule` (right after scheduling): token budget, max_num_seqs, 1 <= n <=
  remaining, block tables exactly cover computed + scheduled tokens, and (unless prefill_first)
  no decode-phase request is left out of a step when the budget could hold every decode.
- `FakeExecutor.execute` (after a decode run is granted): blocks cover the whole run; a
  content-tracking model of the KV cache proves that every cached token a request relies on
  (prefix hits included) really holds that request's token, and that no shared block is written.
- after every `Engine.step`: block ref counts equal the number of live requests holding each
  block, free blocks are exactly those with ref count 0, cached hashes map back to their blocks,
  and each running request's blocks exactly cover its computed tokens.
- at the end: every request finished with exactly max_tokens outputs and every block is free.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchserve.config import POLICIES, SCHEDULER_PRESETS, CacheConfig, SchedulerConfig, scheduler_config
from batchserve.core.scheduler import ScheduledBatch, Scheduler, StepResult
from batchserve.engine import Engine
from batchserve.request import Request, RequestStatus, SamplingParams
from batchserve.sim.batch import DecodeRunResult
from batchserve.sim.engine import SimEngine
from batchserve.sim.scheduler import SimScheduler

INF = float("inf")
MAX_ITERATIONS = 20_000  # engine.step() calls; far above what any generated workload needs
SYNTHETIC = 0  # the token the scheduler appends when an executor returns no sampled ids


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def token_at(r: Request, p: int) -> int:
    """Token at position p: the prompt, then synthetic outputs (the fake executor samples none)."""
    return r.prompt_token_ids[p] if p < r.num_prompt_tokens else SYNTHETIC


# ---------------------------------------------------------------------------- fake executor


def step_duration(num_tokens: int, context_tokens: int) -> float:
    """Time units of one step: fixed + per token + per context token. Integer-valued, so exact."""
    return float(1000 + 7 * num_tokens + context_tokens)


def num_lazy_decodes(batch: ScheduledBatch) -> int:
    """Decodes a SimBatch counts without listing them (none in a core batch)."""
    return getattr(batch, "num_lazy_decodes", 0)


def num_steps(batch: ScheduledBatch) -> int:
    """Steps a SimBatch's fast-forwarded run spans (one for a core batch)."""
    return getattr(batch, "num_steps", 1)


def batch_context(batch: ScheduledBatch) -> int:
    """Tokens attended in a step: each request's context after its new tokens."""
    lazy_context = getattr(batch, "lazy_decode_context", 0)
    return sum(c + n for c, n in zip(batch.num_computed, batch.num_tokens)) + lazy_context


def decode_run_offsets(batch: ScheduledBatch, num_steps: int) -> list[float]:
    """End offsets of `num_steps` decode steps; every decode's context grows by one per step."""
    m = batch.total_tokens
    context = batch_context(batch)
    out, t = [], 0.0
    for j in range(num_steps):
        t += step_duration(m, context + j * m)
        out.append(t)
    return out


class FakeExecutor:
    """Durations from `step_duration`; synthetic tokens; lets the harness check every batch.

    `ff`: "off" never fast-forwards; "limit" grants every decode run the scheduler offers,
    ignoring the horizon; "horizon" grants the steps that start strictly before the horizon
    (what SimExecutor does), which must leave every timing unchanged.
    """

    def __init__(self, ff: str, harness: Harness) -> None:
        self.ff = ff
        self.harness = harness

    def max_decode_steps(self, batch: ScheduledBatch, horizon_s: float, limit: int) -> int:
        if self.ff == "off":
            return 1
        if self.ff == "limit" or horizon_s == INF:
            return limit
        if horizon_s <= 0:
            return 1
        offsets = decode_run_offsets(batch, limit)
        return 1 + sum(1 for t in offsets[:-1] if t < horizon_s)  # step j starts at offsets[j-1]

    def execute(self, batch: ScheduledBatch) -> StepResult:
        self.harness.check_executed_batch(batch)
        steps = num_steps(batch)
        offsets = decode_run_offsets(batch, steps)
        return DecodeRunResult.from_offsets(offsets) if steps > 1 else StepResult(offsets[0])


# ---------------------------------------------------------------------------- checked scheduler


class Checked:
    """Mixed into a real scheduler: the contract checked around every `schedule` call."""

    harness: Harness

    def schedule(self, now: float = 0.0) -> ScheduledBatch:
        h = self.harness
        before = [(r, h.is_decode(r)) for r in self.running]
        batch = super().schedule(now)
        h.check_scheduled_batch(batch, before)
        return batch


class CheckedScheduler(Checked, Scheduler):
    pass


class CheckedSimScheduler(Checked, SimScheduler):
    pass


# ---------------------------------------------------------------------------- harness


class Harness:
    def __init__(self, sched_cfg: SchedulerConfig, cache_cfg: CacheConfig, ff: str, lazy: bool) -> None:
        self.lazy = lazy
        self.sched = (CheckedSimScheduler if lazy else CheckedScheduler)(sched_cfg, cache_cfg)
        self.sched.harness = self
        self.engine = (SimEngine if lazy else Engine)(self.sched, FakeExecutor(ff, self))
        self.cfg = sched_cfg
        self.bs = cache_cfg.block_size
        self.kv_content: dict[int, dict[int, tuple]] = {}  # block id -> slot -> (token, adapter)
        self.verified: dict[str, int] = {}  # request id -> leading positions whose KV content was checked
        self.live: dict[str, Request] = {}

    # -- a running request's progress, including a lazily tracked decode's implicit one --

    def lazy_members(self) -> list[Request]:
        return list(self.sched.cohort.members) if self.lazy else []

    def in_cohort(self, r: Request) -> bool:
        return self.lazy and r in self.sched.cohort

    def computed(self, r: Request) -> int:
        """num_computed_tokens as of now; a cohort member's field lags until the cohort syncs it."""
        return self.sched.cohort.computed(r) if self.in_cohort(r) else r.num_computed_tokens

    def known(self, r: Request) -> int:
        """num_tokens as of now (a cohort member always has exactly one token to compute)."""
        return self.computed(r) + 1 if self.in_cohort(r) else r.num_tokens

    def is_decode(self, r: Request) -> bool:
        return self.computed(r) == self.known(r) - 1

    # -- right after schedule() ------------------------------------------------

    def check_scheduled_batch(self, batch: ScheduledBatch, before: list[tuple[Request, bool]]) -> None:
        cfg, sched, bs = self.cfg, self.sched, self.bs
        lazy = self.lazy_members() if num_lazy_decodes(batch) else []
        assert num_steps(batch) == 1
        assert num_lazy_decodes(batch) == len(lazy)
        assert batch.total_tokens == sum(batch.num_tokens) + len(lazy)
        assert batch.total_tokens <= cfg.max_num_batched_tokens, "token budget exceeded"
        assert len(sched.running) <= cfg.max_num_seqs
        assert len(batch.requests) + len(lazy) <= cfg.max_num_seqs
        assert len({id(r) for r in batch.requests + lazy}) == len(batch.requests) + len(lazy), "scheduled twice"
        running_ids = {id(r) for r in sched.running}
        for r, n, c in zip(batch.requests, batch.num_tokens, batch.num_computed):
            assert id(r) in running_ids and r.status == RequestStatus.RUNNING
            assert c == r.num_computed_tokens
            assert 1 <= n <= r.num_tokens - c, f"{r}: n={n} outside [1, {r.num_tokens - c}]"
            assert len(r.block_ids) == ceil_div(c + n, bs), f"{r}: blocks do not cover exactly c+n={c + n}"
            if cfg.long_prefill_token_threshold:
                assert n <= cfg.long_prefill_token_threshold
            elif not cfg.enable_chunked_prefill:
                assert n == r.num_tokens - c, f"{r}: a prompt was split with chunked prefill off"
        assert sum(c + n for c, n in zip(batch.num_computed, batch.num_tokens)) + sum(
            self.computed(r) + 1 for r in lazy) == batch_context(batch)
        for r in lazy:
            assert id(r) in running_ids and r.status == RequestStatus.RUNNING
            assert len(r.block_ids) == ceil_div(self.computed(r) + 1, bs), f"{r}: blocks do not cover its decode"
        # a block several decode rows read (a shared prefix hit) is read again by all but the first
        readers = Counter(b for r, n in zip(batch.requests, batch.num_tokens) if n == 1 for b in r.block_ids)
        readers.update(b for r in lazy for b in r.block_ids)
        tables = [(r.request_id, r.block_ids) for r, n in zip(batch.requests, batch.num_tokens) if n == 1]
        assert batch.shared_decode_keys == bs * sum(k - 1 for k in readers.values()), tables
        for r in batch.preempted:
            assert r.status == RequestStatus.PREEMPTED and r.block_ids == [] and r.num_computed_tokens == 0
            assert id(r) not in running_ids
            assert any(r is p for p, _ in before), f"{r} preempted without running"
            self.verified.pop(r.request_id, None)  # its KV is gone; recheck whatever it reuses
        if not cfg.prefill_first:
            # Decodes first: while the budget could hold every decode, none is displaced by a prompt
            # chunk (a decode may still be preempted for lack of blocks).
            decodes = [r for r, is_decode in before if is_decode]
            if len(decodes) <= cfg.max_num_batched_tokens:
                served = {id(r) for r in batch.requests + lazy + batch.preempted}
                starved = [r for r in decodes if id(r) not in served]
                assert not starved, f"decodes {starved} left out of a step with budget for all decodes"

    # -- inside execute(), after a decode run may have been granted ------------

    def check_executed_batch(self, batch: ScheduledBatch) -> None:
        bs, pool, steps = self.bs, self.sched.kv.pool, num_steps(batch)
        assert steps >= 1
        work = list(zip(batch.requests, batch.num_tokens, batch.num_computed))
        if num_lazy_decodes(batch):
            work += [(r, 1, self.computed(r)) for r in self.lazy_members()]
        if steps > 1:
            assert all(n == 1 for _, n, _ in work), "a multi-step run holds a prompt chunk"
            assert all(self.is_decode(r) for r, _, _ in work)
            assert steps <= min(r.sampling_params.max_tokens - (self.known(r) - r.num_prompt_tokens)
                                for r, _, _ in work), "a request would finish before the run's last step"
        for r, n, c in work:
            assert len(r.block_ids) == ceil_div(c + n * steps, bs), f"{r}: blocks do not cover the run exactly"
            # Every position before c must hold this request's token: its own earlier work or a prefix hit.
            for p in range(self.verified.get(r.request_id, 0), c):
                held = self.kv_content.get(r.block_ids[p // bs], {}).get(p % bs)
                assert held == (token_at(r, p), r.adapter_id), f"{r}: position {p} holds {held}"
            for p in range(c, c + n * steps):
                block = r.block_ids[p // bs]
                assert pool.blocks[block].ref_cnt == 1, f"{r}: writes position {p} into shared block {block}"
                self.kv_content.setdefault(block, {})[p % bs] = (token_at(r, p), r.adapter_id)
            self.verified[r.request_id] = c + n * steps

    # -- after every engine step -----------------------------------------------

    def check_state(self) -> None:
        sched, bs = self.sched, self.bs
        pool = sched.kv.pool
        waiting = list(sched.waiting)
        assert len(sched.running) <= self.cfg.max_num_seqs
        holders: Counter[int] = Counter()
        for r in sched.running:
            assert r.status == RequestStatus.RUNNING
            assert len(set(r.block_ids)) == len(r.block_ids)
            c = self.computed(r)
            assert len(r.block_ids) == ceil_div(c, bs), f"{r}: {len(r.block_ids)} blocks for {c} computed tokens"
            assert 0 < c < self.known(r)
            holders.update(r.block_ids)
        for r in waiting:
            assert r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
            assert r.block_ids == [] and r.num_computed_tokens == 0
        assert len(sched.running) + len(waiting) == len(self.live)
        for block in pool.blocks:
            assert block.ref_cnt == holders[block.block_id], f"block {block.block_id}: ref count != holders"
            if block.block_hash is not None:
                assert pool.lookup(block.block_hash) == block.block_id
        assert pool.num_free_blocks == pool.num_unused_blocks + sum(1 for b in pool.blocks if b.ref_cnt == 0)
        assert pool.num_cached_blocks == sum(1 for b in pool.blocks if b.block_hash is not None)

    # -- the arrival-driven loop (what sim.cluster.Cluster does for one replica) ---

    def run(self, requests: list[Request]) -> None:
        engine = self.engine
        pending = sorted(requests, key=lambda r: r.arrival_time)
        i = iterations = 0
        while i < len(pending) or engine.has_unfinished():
            t_next = pending[i].arrival_time if i < len(pending) else INF
            if engine.has_unfinished() and engine.now < t_next:
                # raises "scheduler stalled" on a deadlock
                finished = (engine.step(until=t_next) if self.lazy else engine.step()).finished
                iterations += 1
                assert iterations < MAX_ITERATIONS, "no progress: livelock"
                for r in finished:
                    assert r.status == RequestStatus.FINISHED_LENGTH and r.block_ids == []
                    assert r.finish_time == engine.now
                    del self.live[r.request_id]
                self.check_state()
            else:
                r = pending[i]
                i += 1
                if not engine.has_unfinished():
                    engine.now = max(engine.now, r.arrival_time)
                engine.add_request(r)
                self.live[r.request_id] = r
        self.check_state()
        pool = self.sched.kv.pool
        assert pool.num_free_blocks == pool.num_blocks, "blocks leaked"
        assert all(b.ref_cnt == 0 for b in pool.blocks)
        for r in requests:
            assert r.status == RequestStatus.FINISHED_LENGTH
            assert r.num_output_tokens == r.sampling_params.max_tokens
            assert r.output_token_ids == [SYNTHETIC] * r.sampling_params.max_tokens
            assert r.num_tokens == r.num_prompt_tokens + r.sampling_params.max_tokens
            assert r.arrival_time <= r.first_scheduled_time < r.first_token_time <= r.finish_time


# ---------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    requests: list[Request]
    sched_cfg: SchedulerConfig
    cache_cfg: CacheConfig

    def __repr__(self) -> str:
        """Everything needed to rebuild the workload, for failure reports."""
        reqs = [(r.request_id, r.prompt_token_ids, r.sampling_params.max_tokens, r.arrival_time, r.priority,
                 r.deadline, r.adapter_id) for r in self.requests]
        return f"Workload(requests={reqs!r}, sched_cfg={self.sched_cfg!r}, cache_cfg={self.cache_cfg!r})"

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints a failing example
        printer.text(repr(self))

    def fresh_requests(self) -> list[Request]:
        """Unstarted copies, so one workload can be run twice."""
        return [
            Request(r.request_id, list(r.prompt_token_ids),
                    SamplingParams(max_tokens=r.sampling_params.max_tokens, ignore_eos=True),
                    arrival_time=r.arrival_time, priority=r.priority, deadline=r.deadline,
                    adapter_id=r.adapter_id)
            for r in self.requests
        ]


@st.composite
def workloads(draw, presets=tuple(SCHEDULER_PRESETS), policies=POLICIES) -> Workload:
    block_size = draw(st.sampled_from([1, 2, 4, 16]))
    num_requests = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    alphabet = draw(st.integers(1, 4))  # tokens in [0, alphabet]: 0 is also the synthetic output token
    bases = [[rng.randint(0, alphabet) for _ in range(80)] for _ in range(3)]
    specs = []
    for k in range(num_requests):
        prompt_len = draw(st.integers(1, 80))
        share = draw(st.sampled_from(["none", "prefix", "whole"]))
        base = bases[draw(st.integers(0, 2))]
        if share == "whole":
            prompt = base[:prompt_len]  # identical to every same-length prompt of its group
        elif share == "prefix":
            cut = rng.randint(0, prompt_len)
            prompt = base[:cut] + [rng.randint(0, alphabet) for _ in range(prompt_len - cut)]
        else:
            prompt = [rng.randint(0, 1000) for _ in range(prompt_len)]
        max_tokens = draw(st.integers(1, 40))
        # A few steps apart and never step-aligned; some arrive together (ties exercise the
        # preemption tie-break, which once made two requests preempt each other forever).
        arrival = float(draw(st.integers(0, 40)) * 997 + (k if draw(st.booleans()) else 0))
        priority = draw(st.integers(0, 3))
        deadline = draw(st.none() | st.integers(0, 80_000).map(float))
        adapter = draw(st.sampled_from([None, None, None, "lora-a", 7]))
        specs.append((str(k), prompt, max_tokens, arrival, priority, deadline, adapter))
    requests = [
        Request(rid, prompt, SamplingParams(max_tokens=m, ignore_eos=True), arrival_time=a,
                priority=p, deadline=None if d is None else a + d, adapter_id=ad)
        for rid, prompt, m, a, p, d, ad in specs
    ]
    longest = max(len(r.prompt_token_ids) + r.sampling_params.max_tokens for r in requests)
    # Every request fits the pool alone; beyond that, pools are tiny so that requests preempt.
    num_blocks = ceil_div(longest, block_size) + draw(st.integers(0, 3 * ceil_div(80, block_size)))
    preset = draw(st.sampled_from(presets))
    chunked = SCHEDULER_PRESETS[preset]["enable_chunked_prefill"]
    if chunked:
        budget = draw(st.integers(1, 16) | st.integers(1, 256))
        threshold = draw(st.sampled_from([0, 0, 0, 1, 3, 16]))
    else:
        budget = draw(st.integers(longest, longest + 64))  # a whole request must fit one step
        threshold = 0
    sched_cfg = scheduler_config(
        preset,
        policy=draw(st.sampled_from(policies)),
        max_num_batched_tokens=budget,
        max_num_seqs=draw(st.integers(1, min(12, budget))),
        long_prefill_token_threshold=threshold,
        watermark=draw(st.sampled_from([0.0, 0.01, 0.2])),
        lpm_window=draw(st.sampled_from([1, 4, 256])),
    )
    cache_cfg = CacheConfig(block_size=block_size, num_blocks=num_blocks,
                            enable_prefix_caching=draw(st.booleans()))
    return Workload(requests, sched_cfg, cache_cfg)


def run_workload(w: Workload, mode: str) -> tuple[Harness, list[Request]]:
    """Run fresh copies of the workload's requests; mode is "explicit" or "lazy-<ff>"."""
    lazy = mode.startswith("lazy")
    h = Harness(w.sched_cfg, w.cache_cfg, ff=mode.split("-")[1] if lazy else "off", lazy=lazy)
    requests = w.fresh_requests()
    h.run(requests)
    return h, requests


def outcome(requests: list[Request]) -> list[tuple]:
    return [(r.request_id, r.first_scheduled_time, r.first_token_time, r.finish_time, r.num_output_tokens,
             r.num_preemptions, r.num_cached_tokens) for r in requests]


# ---------------------------------------------------------------------------- properties

MODES = ["explicit", "lazy-off", "lazy-limit", "lazy-horizon"]
# 60 workloads a property (8 properties: 10 s of the suite under `-n 2`); each CI run draws new ones
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mode", MODES)
@PROPERTY
@given(w=workloads())
def test_scheduler_contract_holds_after_every_step(mode: str, w: Workload) -> None:
    """Budget, max_num_seqs, block coverage and ref counts hold after every step, decodes are never
    displaced by prompt chunks (unless prefill_first), nothing stalls or leaks, KV reuse is always
    of the right tokens, and every request gets exactly max_tokens outputs."""
    run_workload(w, mode)


@pytest.mark.parametrize("mode", ["explicit", "lazy-horizon"])
@PROPERTY
@given(w=workloads(presets=("sarathi",)))
def test_sarathi_contract(mode: str, w: Workload) -> None:
    """The same contract, searched over Sarathi configs only (chunked prompts sharing steps with decodes)."""
    run_workload(w, mode)


@PROPERTY
@given(w=workloads())
def test_fast_forward_is_exact(w: Workload) -> None:
    """Fast-forwarded decode runs (bounded by the next arrival) reproduce the step-by-step run exactly:
    same first-scheduled, first-token and finish times, outputs, preemptions and cache hits."""
    slow, slow_reqs = run_workload(w, "lazy-off")
    fast, fast_reqs = run_workload(w, "lazy-horizon")
    assert outcome(fast_reqs) == outcome(slow_reqs)
    assert fast.engine.num_steps == slow.engine.num_steps
    assert fast.engine.now == slow.engine.now
    assert fast.engine.num_iterations <= slow.engine.num_iterations


@PROPERTY
@given(w=workloads())
def test_lazy_decodes_match_explicit_scheduling(w: Workload) -> None:
    """The simulator's lazily tracked decodes schedule exactly what explicit per-request decodes do."""
    _, explicit = run_workload(w, "explicit")
    _, lazy = run_workload(w, "lazy-horizon")
    assert outcome(lazy) == outcome(explicit)


def test_decode_run_stops_before_evicting_a_refused_requests_prefix_hit() -> None:
    """A decode run must stop where its new blocks would evict a refused waiting request's prefix hit.

    Cached-but-free hits consume free blocks, so B (prompt P + 6 tokens, all of P cached) does not
    fit while D decodes. D's next block evicts E's block (harmless), the one after evicts C's copy of
    P[3], the coldest block of B's hit chain: B's hit drops to 3 blocks, and it needs so few free blocks
    that it is admitted there. A fast-forward over D's decodes once ran past that step (hypothesis
    found this; B then waited for D to finish).
    """
    prefix = list(range(100, 120))

    def req(rid: str, prompt: list[int], max_tokens: int, arrival: float) -> Request:
        return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=arrival)

    # E and C finish (freed first: coldest) before A, so C's copy of P[:4] holds the hash, not A's.
    requests = [req("D", [1, 2, 3, 4], 20, 0.0), req("E", [5], 1, 0.0), req("C", prefix[:4], 1, 0.0),
                req("A", prefix, 1, 0.0), req("B", prefix + [7] * 6, 1, 2251.0)]  # B arrives as A finishes
    w = Workload(requests, scheduler_config("sarathi", policy="fcfs", max_num_batched_tokens=16, max_num_seqs=4,
                                            watermark=0.0),
                 CacheConfig(block_size=1, num_blocks=31, enable_prefix_caching=True))
    _, explicit = run_workload(w, "explicit")
    b = explicit[-1]
    assert b.arrival_time < b.first_scheduled_time < explicit[0].finish_time  # refused, then admitted mid-decode
    for mode in ("lazy-off", "lazy-limit", "lazy-horizon"):
        _, lazy = run_workload(w, mode)
        assert outcome(lazy) == outcome(explicit), mode

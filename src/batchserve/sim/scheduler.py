"""The simulator's scheduler: the core Scheduler's decisions, with steady decodes tracked lazily.

Token values are synthetic in a simulation, so a request in steady decode
joins a DecodeCohort and costs nothing per step; only the requests with a
prompt (chunk) to compute are scheduled one by one. A step of lazy decodes
only (`SimBatch.can_extend`) can be fast-forwarded into a run of identical
steps up to the next event (`decode_run_limit`, `extend_decode_run`). The
decisions, times and preemptions are exactly those of the core Scheduler.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from ..config import CacheConfig, SchedulerConfig
from ..core.batch import StepResult
from ..core.scheduler import Scheduler
from ..request import Request, RequestStatus
from .batch import DecodeRunResult, SimBatch
from .decode_cohort import DecodeCohort


class SimScheduler(Scheduler):
    batch_type = SimBatch

    def __init__(self, config: SchedulerConfig, cache_config: CacheConfig, max_model_len: int | None = None) -> None:
        super().__init__(config, cache_config, max_model_len)
        self.cohort = DecodeCohort(cache_config.block_size)
        self._explicit: dict[Request, None] = {}  # running requests scheduled one by one
        # The prefix hits of the waiting request this step refused for lack of blocks: a run that
        # evicted one would shorten its hit, and so the free blocks it needs, and might admit it.
        self._refused_hits: list[int] = []

    # ---- who is scheduled how --------------------------------------------------

    def _add_running(self, req: Request) -> None:
        super()._add_running(req)
        self._explicit[req] = None

    def _remove_running(self, req: Request) -> None:
        super()._remove_running(req)
        if req in self.cohort.members:
            self.cohort.leave(req)
        else:
            del self._explicit[req]

    def _requests_to_schedule(self) -> Iterable[Request]:
        return self._explicit

    def _append_token(self, req: Request, token: int, complete: bool = False) -> bool:
        """A request that sampled a token and goes on decoding joins the cohort, unless a grammar constrains
        it (its steps cost more, `structured_overhead_s`) or speculative decoding is on: a verification takes
        blocks for its drafts in running order, short of them it decodes plainly, so cohort decodes served
        first would change who verifies; every request stays listed, as the core scheduler serves it."""
        if super()._append_token(req, token, complete):
            return True
        if req.sampling_params.structured_outputs is not None or self.speculator is not None:
            return False
        del self._explicit[req]
        self.cohort.join(req)
        return False

    # ---- scheduling ----------------------------------------------------------

    def schedule(self, now: float = 0.0) -> SimBatch:
        self._refused_hits = []
        batch = super().schedule(now)
        # Whatever left a waiting request waiting (budget, max_num_seqs, blocks) stays so through
        # a run of decode steps (`extend_decode_run` keeps its prefix hits cached), except for
        # `lpm`, which re-ranks each step.
        batch.can_extend = (
            batch.num_lazy_decodes > 0
            and not batch.requests
            and not self._explicit
            and not batch.preempted
            and not (self.config.policy == "lpm" and self.waiting)
        )
        return batch

    def _refused_for_blocks(self, computed_blocks: list[int]) -> None:
        self._refused_hits = computed_blocks

    def _shared_decode_blocks(self, batch: SimBatch, read: Container[int] = ()) -> int:
        """The listed decodes' repeated block reads, and the cohort's when it decodes this step."""
        if not batch.num_lazy_decodes:
            return super()._shared_decode_blocks(batch, read)
        cohort = self.cohort
        return cohort.num_shared_blocks + super()._shared_decode_blocks(batch, cohort.block_readers)

    def _schedule_running(self, batch: SimBatch, budget: int) -> int:
        """The cohort's decodes first (one token each), then the explicit requests."""
        return super()._schedule_running(batch, self._schedule_cohort(batch, budget))

    def _schedule_cohort(self, batch: SimBatch, budget: int) -> int:
        """Give lazily tracked decodes the blocks this tick needs; they take one token each."""
        cohort, pool = self.cohort, self.kv.pool
        members = cohort.members
        needs = cohort.pop_block_needs(cohort.clock)
        for req in needs:
            while req in members and pool.num_free_blocks == 0:
                self._preempt(self.waiting.victim(self.running), batch)
            if req in members:  # not itself preempted
                req.block_ids.append(pool.allocate_one())
        cohort.push_block_needs(needs)
        n = len(cohort)
        batch.num_lazy_decodes = n
        batch.lazy_decode_context = cohort.context + n
        batch.lazy_adapters = cohort.adapters  # live: a later preemption in this step updates it
        batch.cohort = cohort
        batch.total_tokens += n
        return budget - n

    def _preempt(self, victim: Request, batch: SimBatch) -> int:
        if batch.num_lazy_decodes and victim in self.cohort.members:
            self.cohort.sync(victim)
            batch.num_lazy_decodes -= 1
            batch.lazy_decode_context -= victim.num_computed_tokens + 1
            batch.total_tokens -= 1
            super()._preempt(victim, batch)
            return 1  # its tick was already counted in this batch
        return super()._preempt(victim, batch)

    # ---- fast-forward ----------------------------------------------------------

    def decode_run_limit(self, batch: SimBatch) -> int:
        """Most steps this batch could repeat unchanged: 1 unless it is a pure lazy-decode step.

        A run is valid only while nothing could change between its steps: no
        request finishes before the run's last step, and no waiting request
        could be admitted (whatever blocked it - budget, max_num_seqs, blocks -
        stays so while the same requests decode; fewer free blocks never admit
        it, but a shorter prefix hit may, see `extend_decode_run`).
        """
        if not batch.can_extend:
            return 1
        return self.cohort.next_finish() - self.cohort.clock

    def extend_decode_run(self, batch: SimBatch, max_steps: int) -> int:
        """Turn a pure decode step into a run of up to `max_steps` steps (at most `decode_run_limit`).

        The run stops before the first tick whose block need finds no free
        block, so no step of it would preempt, or would evict a prefix hit of
        the waiting request refused for lack of blocks, so none would admit
        it. Returns the steps granted.
        """
        if max_steps <= 1:
            return 1
        cohort, pool = self.cohort, self.kv.pool
        start = cohort.clock
        steps = max_steps
        for tick in range(start + 1, start + max_steps):
            needs = cohort.pop_block_needs(tick)
            if len(needs) > pool.num_free_blocks or (
                self._refused_hits and pool.would_evict_any(len(needs), self._refused_hits)
            ):
                steps = tick - start  # the run ends before the tick that would preempt or admit
                cohort.push_block_needs(needs)
                break
            for req in needs:
                req.block_ids.append(pool.allocate_one())
            cohort.push_block_needs(needs)
        batch.num_steps = steps
        return steps

    # ---- results -------------------------------------------------------------

    def update(self, batch: SimBatch, result: StepResult, start_time: float) -> list[Request]:
        """Advance the cohort by the batch's steps, then apply the explicit requests' results."""
        finished: list[Request] = []
        if batch.num_lazy_decodes:
            cohort = self.cohort
            times = result.step_end_offsets if isinstance(result, DecodeRunResult) else (result.duration,)
            for req in cohort.members:
                if req.token_times is not None:
                    req.token_times.extend(start_time + t for t in times)
            end_time = start_time + result.duration
            for req in cohort.advance(batch.num_steps):
                del self.running[req]
                self._finish(req, RequestStatus.FINISHED_LENGTH)
                req.finish_time = end_time
                finished.append(req)
        return finished + super().update(batch, result, start_time)

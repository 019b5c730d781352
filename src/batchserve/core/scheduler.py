"""The scheduler: which requests run this step, and how many tokens each.

Phase-free, as in vLLM v1: every request has `num_tokens` known tokens and
`num_computed_tokens` in the KV cache; a step gives each scheduled request
`1 <= n <= num_tokens - num_computed_tokens` new tokens under one token
budget. Decodes are served first (stall-free, as in Sarathi-Serve), then
running prompts, then waiting requests in policy order; with `prefill_first`
a step that can admit a prompt runs prompts only (vLLM v0). When blocks run
out, the running request the policy ranks last is preempted: its blocks are
freed and it recomputes later.

Every running request is scheduled explicitly, as a real executor needs. The
simulator's scheduler (`sim.scheduler.SimScheduler`) overrides the small
hooks below (`_requests_to_schedule`, `_add_running`, `_remove_running`,
`_schedule_running`, `_preempt`, `_append_token`, `_refused_for_blocks`) to
track steady decodes lazily, with the same decisions.

With async scheduling (`engine.core.AsyncEngine`) the next `schedule` runs
before a step's `update`: `assume_progress` counts the running step's tokens
as computed first, with a placeholder for each token it samples.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING

from ..config import CacheConfig, SchedulerConfig
from ..request import Request, RequestStatus
from .batch import SYNTHETIC_TOKEN, ScheduledBatch, StepResult
from .kv_cache_manager import KVCacheManager
from .policy import WaitingQueue

if TYPE_CHECKING:
    from ..spec_decode import Speculator

__all__ = ["ScheduledBatch", "Scheduler", "StepResult"]

_RUNNING = RequestStatus.RUNNING


class Scheduler:
    batch_type: type[ScheduledBatch] = ScheduledBatch
    """What `schedule` returns; a subclass may extend the batch."""

    def __init__(
        self,
        config: SchedulerConfig,
        cache_config: CacheConfig,
        max_model_len: int | None = None,
    ) -> None:
        if cache_config.num_blocks is None:
            raise ValueError("the scheduler needs cache_config.num_blocks resolved (derive it from memory first)")
        self.config = config
        self.cache_config = cache_config
        self.max_model_len = max_model_len
        self.kv = KVCacheManager(cache_config)
        self.waiting = WaitingQueue(config.policy, config.lpm_window)
        self.running: dict[Request, None] = {}  # every running request, in admission order
        self._reserve = int(config.watermark * cache_config.num_blocks)
        self.num_preemptions = 0
        self.admission_check: Callable[[Request, Iterable[Request]], bool] | None = None
        """An extra admission constraint (e.g. LoRA slots): may `req` join these running requests now?"""
        self.speculator: Speculator | None = None
        """Speculative decoding: draft tokens for decoding requests, verified in the same step; None: off."""

    # ---- requests in and out -------------------------------------------------

    def check_request(self, req: Request) -> None:
        """Raise ValueError if the request can never run under this configuration."""
        need = req.num_prompt_tokens + req.sampling_params.max_tokens
        if self.max_model_len is not None and need > self.max_model_len:
            raise ValueError(
                f"request {req.request_id}: prompt ({req.num_prompt_tokens}) + max_tokens "
                f"({req.sampling_params.max_tokens}) = {need} tokens exceeds max_model_len={self.max_model_len}"
            )
        if not self.config.enable_chunked_prefill and need > self.config.max_num_batched_tokens:
            raise ValueError(
                f"request {req.request_id}: {need} tokens may need one step larger than "
                f"max_num_batched_tokens={self.config.max_num_batched_tokens} with chunked prefill off; "
                "raise --max-num-batched-tokens or enable chunked prefill (e.g. --scheduler sarathi)"
            )
        capacity = self.kv.num_blocks * self.kv.block_size
        if need > capacity:
            raise ValueError(
                f"request {req.request_id}: {need} tokens exceed the whole KV cache ({capacity} tokens); "
                "give the cache more memory or shorten the request"
            )

    def add_request(self, req: Request) -> None:
        self.check_request(req)
        req.status = RequestStatus.WAITING
        self.waiting.add(req)

    def finish_requests(self, requests: list[Request], status: RequestStatus) -> None:
        """Finish requests from outside (abort, stop string); frees their blocks at once."""
        for req in requests:
            if req.is_finished:
                continue
            if req.status == _RUNNING:
                self._remove_running(req)
            else:
                self.waiting.remove(req)
            self._finish(req, status)

    def _add_running(self, req: Request) -> None:
        self.running[req] = None

    def _remove_running(self, req: Request) -> None:
        del self.running[req]

    def _requests_to_schedule(self) -> Iterable[Request]:
        """The running requests a step serves one by one: all of them."""
        return self.running

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.status = status
        self.kv.free(req)
        if self.speculator is not None:
            self.speculator.release(req)

    def has_unfinished(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    # ---- scheduling ----------------------------------------------------------

    def schedule(self, now: float = 0.0) -> ScheduledBatch:
        """Pick this step's requests and token counts; `now` stamps first admissions."""
        batch = self._schedule(now)
        batch.shared_decode_keys = self._shared_decode_blocks(batch) * self.kv.block_size
        return batch

    def _schedule(self, now: float) -> ScheduledBatch:
        cfg = self.config
        batch = self.batch_type()
        budget = cfg.max_num_batched_tokens
        if cfg.prefill_first and self.waiting:
            self._schedule_waiting(batch, budget, now)
            if batch.requests:
                return batch
        budget = self._schedule_running(batch, budget)
        if not batch.preempted:
            self._schedule_waiting(batch, budget, now)
        return batch

    def _shared_decode_blocks(self, batch: ScheduledBatch, read: Container[int] = ()) -> int:
        """Reads of a block by a decode row of the batch after another decode row (or a reader in `read`) read it.

        Only prefix-cache hits share blocks, so with the cache off there are none (and no per-step scan)."""
        if not self.kv.enable_caching:
            return 0
        first: set[int] = set()
        repeats = 0
        for req, n in zip(batch.requests, batch.num_tokens):
            if n != 1:
                continue
            for bid in self.kv.shared_blocks(req):
                if bid in first or bid in read:
                    repeats += 1
                else:
                    first.add(bid)
        return repeats

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        """Serve running requests one by one, decodes before prompt chunks; returns the budget left."""
        threshold = self.config.long_prefill_token_threshold
        kv = self.kv
        bs = kv.block_size
        order = sorted(self._requests_to_schedule(), key=lambda r: r.num_tokens - r.num_computed_tokens > 1)
        drafts, spare = self._propose(order, budget)
        for req in order:
            if budget <= 0:
                break
            if req.status is not _RUNNING:
                continue  # preempted earlier in this loop
            c = req.num_computed_tokens
            n = req.num_tokens - c
            if n > budget:
                n = budget
            if threshold and n > threshold:
                n = threshold
            draft = drafts.get(req) if drafts else None
            if draft is not None:
                # verify what the spare budget and free blocks allow; short of blocks, decode plainly
                draft = draft[:max(0, min(spare, budget - 1))]
                if draft and (c + 1 + len(draft) <= len(req.block_ids) * bs or kv.allocate_slots(req, 1 + len(draft))):
                    spare -= len(draft)
                    n += len(draft)
                    batch.spec_token_ids[req] = draft
            # fast path: the request's last block still has room (most decode steps)
            if c + n > len(req.block_ids) * bs and not kv.allocate_slots(req, n):
                while True:
                    victim = self.waiting.victim(self.running)
                    budget += self._preempt(victim, batch)
                    if victim is req or kv.allocate_slots(req, n):
                        break
                if victim is req:
                    continue
            batch.add(req, n, c)
            budget -= n
        return budget

    def _propose(self, order: list[Request], budget: int) -> tuple[dict[Request, list[int]], int]:
        """Drafts for the decoding requests, and the budget left for them once every decode has its token."""
        if self.speculator is None:
            return {}, 0
        decodes = [r for r in order if r.num_tokens - r.num_computed_tokens == 1]
        return self.speculator.propose(decodes, len(self.running)), budget - len(decodes)

    def _preempt(self, victim: Request, batch: ScheduledBatch) -> int:
        """Free a running request's blocks and requeue it; returns budget it had taken this step."""
        self._remove_running(victim)
        refund = batch.remove(victim)
        self.kv.free(victim)
        batch.num_preempted_tokens += victim.num_computed_tokens
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.add(victim)
        batch.preempted.append(victim)
        return refund

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int, now: float) -> None:
        """Admit waiting requests in policy order until one does not fit (head-of-line).

        A request the admission check refuses (its adapter has no slot) is stepped over, up to
        `admission_lookahead` of them, and keeps its place in the queue for the next step.
        """
        try:
            self._admit(batch, budget, now)
        finally:
            self.waiting.unskip()

    def _admit(self, batch: ScheduledBatch, budget: int, now: float) -> None:
        cfg = self.config
        kv = self.kv
        waiting = self.waiting
        if cfg.policy == "lpm" and waiting:
            waiting.rank_by_cached_prefix(kv.count_cached_tokens)
        while waiting:
            if budget <= 0 or len(self.running) >= cfg.max_num_seqs:
                return
            req = waiting.peek()
            if self.admission_check is not None and not self.admission_check(req, self.running):
                if waiting.num_skipped >= cfg.admission_lookahead:
                    return
                waiting.skip()
                continue
            computed = kv.get_computed_blocks(req)
            num_cached = len(computed) * kv.block_size
            n = req.num_tokens - num_cached
            if n > budget:
                if not cfg.enable_chunked_prefill:
                    return
                n = budget
            if cfg.long_prefill_token_threshold and n > cfg.long_prefill_token_threshold:
                n = cfg.long_prefill_token_threshold
            # the watermark only guards running requests; an empty engine admits whatever fits
            reserve = self._reserve if self.running else 0
            if not kv.allocate_slots(req, n, computed, reserve=reserve):
                self._refused_for_blocks(computed)
                return
            waiting.pop()
            if req.status == RequestStatus.WAITING:
                kv.num_queries += req.num_prompt_tokens
                kv.num_hits += num_cached
                req.num_cached_tokens = num_cached
                req.first_scheduled_time = now
            batch.num_cached_tokens += num_cached
            req.status = _RUNNING
            self._add_running(req)
            batch.add(req, n, req.num_computed_tokens)
            budget -= n

    def _refused_for_blocks(self, computed_blocks: list[int]) -> None:
        """Hook: the next waiting request did not fit the free blocks; `computed_blocks` are its prefix hits."""

    # ---- async scheduling ----------------------------------------------------

    def assume_progress(self, batch: ScheduledBatch) -> None:
        """Let the next `schedule` run while `batch` executes (async scheduling, as in vLLM v1): its tokens count
        as computed, and each row that samples holds a placeholder for the token it will sample, which `update`
        fills. A request preempted meanwhile drops its placeholder there, and recomputes without that token."""
        for i, req in enumerate(batch.requests):
            if req.status is not _RUNNING:
                continue
            req.num_computed_tokens += batch.num_tokens[i]
            if batch.samples(i):
                req.num_tokens += 1
                batch.placeholders.append(req)
        batch.assumed = True

    def drop_finished(self, batch: ScheduledBatch) -> None:
        """Unschedule the rows of requests that finished after `batch` was scheduled (async scheduling: their
        last step's update came between)."""
        gone = [r for r in batch.requests if r.status is not _RUNNING]
        if not gone:
            return  # most steps: nothing to unschedule, and the shared-key count stands
        for req in gone:
            batch.remove(req)
        batch.shared_decode_keys = self._shared_decode_blocks(batch) * self.kv.block_size

    # ---- results -------------------------------------------------------------

    def update(self, batch: ScheduledBatch, result: StepResult, start_time: float) -> list[Request]:
        """Apply a step's results; returns the requests that finished.

        Rows of requests that finished or were preempted while the step ran (async scheduling, an abort) are
        dropped, sampled tokens included."""
        end_time = start_time + result.duration
        kv = self.kv
        bs = kv.block_size
        sampled = result.sampled_token_ids
        finished: list[Request] = []
        for req in batch.placeholders:
            req.num_tokens -= 1  # the token itself comes next
        for i, (req, n) in enumerate(zip(batch.requests, batch.num_tokens)):
            if req.status is not _RUNNING:
                if sampled is not None:
                    sampled[i] = []
                continue
            draft = batch.spec_token_ids.get(req) if batch.spec_token_ids else None
            if draft is not None:
                batch.num_rejected_tokens += len(draft) + 1 - len(sampled[i])
                if self._accept_verified(req, draft, sampled[i], end_time):
                    finished.append(req)
                continue
            if not batch.assumed:
                req.num_computed_tokens += n
            c = req.num_computed_tokens
            if c < req.num_tokens:
                if c // bs > req.num_committed_blocks:
                    kv.commit(req)  # share a long prompt's finished blocks while the rest computes
                continue  # a prompt chunk short of the end: nothing sampled
            if n > 1 or not req.output_token_ids:
                kv.commit(req)  # a finished prompt; decode-filled blocks are committed when freed
            if req.first_token_time is None:
                req.first_token_time = end_time
            if req.token_times is not None:
                req.token_times.append(end_time)
            token = SYNTHETIC_TOKEN if sampled is None else sampled[i][0]
            if self._append_token(req, token, i in result.stop_rows):
                finished.append(req)
        for req in finished:
            self._remove_running(req)
            req.finish_time = end_time
        return finished

    def _accept_verified(self, req: Request, draft: list[int], tokens: list[int], end_time: float) -> bool:
        """Apply a verified draft: `tokens` are its accepted prefix plus one more; True if the request finished.

        Only the accepted positions count as computed; blocks that held nothing but rejected drafts
        go back to the pool. A stop inside the run cuts `tokens` there, so later layers see what was kept.
        """
        num_accepted = len(tokens) - 1
        req.num_computed_tokens += 1 + num_accepted
        self.speculator.record(req, len(draft), num_accepted)
        for j, token in enumerate(tokens):
            if req.token_times is not None:
                req.token_times.append(end_time)
            if self._append_token(req, token):
                del tokens[j + 1:]
                return True
        self.kv.commit(req)
        self.kv.trim(req)
        return False

    def _append_token(self, req: Request, token: int, complete: bool = False) -> bool:
        """Append a sampled token, stopping at max_tokens or a stop token; True if the request finished.

        `complete`: the executor says the token completes the output (a finished grammar); that is a
        stop even at max_tokens, since nothing was cut off.
        """
        params = req.sampling_params
        req.append_output(token)
        num_out = req.num_tokens - len(req.prompt_token_ids)
        if complete:
            self._finish(req, RequestStatus.FINISHED_STOPPED)
            return True
        if num_out >= params.max_tokens:
            self._finish(req, RequestStatus.FINISHED_LENGTH)
            return True
        if params.stop_token_ids and token in params.stop_token_ids and num_out >= params.min_tokens:
            self._finish(req, RequestStatus.FINISHED_STOPPED)
            return True
        return False

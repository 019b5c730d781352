"""The scheduler: which requests run this step, and how many tokens each.

Phase-free, as in vLLM v1: every request has `num_tokens` known tokens and
`num_computed_tokens` in the KV cache; a step gives each scheduled request
`1 <= n <= num_tokens - num_computed_tokens` new tokens under one token
budget. Running requests are served first (a decode never waits behind a
prompt unless `prefill_first`), then waiting ones in policy order. When
blocks run out, the running request the policy ranks last is preempted: its
blocks are freed and it recomputes later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import CacheConfig, SchedulerConfig
from ..request import Request, RequestStatus
from .kv_cache_manager import KVCacheManager
from .policy import WaitingQueue


@dataclass
class ScheduledBatch:
    """One step's work, as the executor needs it.

    `requests[i]` computes `num_tokens[i]` new tokens starting at position
    `num_computed[i]`. With `num_steps > 1` the batch is a run of pure decode
    steps (every request advances one token per step), which the simulator
    uses to fast-forward between events.
    """

    requests: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    num_computed: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_steps: int = 1
    total_tokens: int = 0
    num_preempted_tokens: int = 0  # computed tokens thrown away by this step's preemptions
    can_extend: bool = False  # a pure decode step whose successors would be identical

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def is_empty(self) -> bool:
        return not self.requests

    @property
    def num_decodes(self) -> int:
        return sum(1 for n in self.num_tokens if n == 1)

    @property
    def num_sampling(self) -> int:
        """Requests that produce a token this step (the last chunk of a prompt, or a decode)."""
        return sum(
            1 for r, c, n in zip(self.requests, self.num_computed, self.num_tokens) if c + n == r.num_tokens
        )


@dataclass
class StepResult:
    """What an executor returns: sampled tokens and how long the step took.

    `sampled_token_ids[i]` holds the tokens of `batch.requests[i]` (empty for a
    prompt chunk that does not reach the end); `None` means synthetic tokens
    (the simulator). `step_end_offsets` are the end times of each of the
    batch's `num_steps` steps, relative to its start.
    """

    step_end_offsets: list[float]
    sampled_token_ids: list[list[int]] | None = None

    @property
    def duration(self) -> float:
        return self.step_end_offsets[-1]


SYNTHETIC_TOKEN = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache_config: CacheConfig, max_model_len: int | None = None) -> None:
        if cache_config.num_blocks is None:
            raise ValueError("the scheduler needs cache_config.num_blocks resolved (derive it from memory first)")
        self.config = config
        self.cache_config = cache_config
        self.max_model_len = max_model_len
        self.kv = KVCacheManager(cache_config)
        self.waiting = WaitingQueue(config.policy, config.lpm_window)
        self.running: list[Request] = []
        self._reserve = int(config.watermark * cache_config.num_blocks)
        self.num_preemptions = 0

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
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            else:
                self.waiting.remove(req)
            self._finish(req, status)

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.status = status
        self.kv.free(req)

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    # ---- scheduling ----------------------------------------------------------

    def schedule(self, now: float = 0.0) -> ScheduledBatch:
        """Pick this step's requests and token counts; `now` stamps first admissions."""
        cfg = self.config
        batch = ScheduledBatch()
        budget = cfg.max_num_batched_tokens
        if cfg.prefill_first and self.waiting:
            self._schedule_waiting(batch, budget, now)
            if batch.requests:
                return batch
        budget, all_running = self._schedule_running(batch, budget)
        if not batch.preempted:
            self._schedule_waiting(batch, budget, now)
        # Whatever left a waiting request waiting (budget, max_num_seqs, blocks) stays
        # so through a run of decode steps, except for `lpm`, which re-ranks each step.
        batch.can_extend = (
            all_running
            and not batch.preempted
            and batch.total_tokens == len(batch.requests)
            and not (cfg.policy == "lpm" and self.waiting)
        )
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> tuple[int, bool]:
        """Serve running requests in order; returns the budget left and whether all got tokens."""
        threshold = self.config.long_prefill_token_threshold
        kv = self.kv
        bs = kv.block_size
        running = self.running
        requests, num_tokens, num_computed = batch.requests, batch.num_tokens, batch.num_computed
        i = 0
        while i < len(running):
            if budget <= 0:
                return budget, False
            req = running[i]
            c = req.num_computed_tokens
            n = req.num_tokens - c
            if n > budget:
                n = budget
            if threshold and n > threshold:
                n = threshold
            # fast path: the request's last block still has room (most decode steps)
            if c + n > len(req.block_ids) * bs and not kv.allocate_slots(req, n):
                while True:
                    victim = self.waiting.victim(running)
                    budget += self._preempt(victim, batch)
                    if victim is req or kv.allocate_slots(req, n):
                        break
                if victim is req:
                    continue  # running[i] is now the next request
                i = running.index(req)  # a victim ahead of req shifts the indices
            requests.append(req)
            num_tokens.append(n)
            num_computed.append(c)
            budget -= n
            i += 1
        batch.total_tokens = sum(num_tokens)
        return budget, True

    def _preempt(self, victim: Request, batch: ScheduledBatch) -> int:
        """Free a running request's blocks and requeue it; returns budget it had taken this step."""
        self.running.remove(victim)
        refund = 0
        for j, r in enumerate(batch.requests):
            if r is victim:
                refund = batch.num_tokens[j]
                del batch.requests[j], batch.num_tokens[j], batch.num_computed[j]
                batch.total_tokens -= refund
                break
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
        """Admit waiting requests in policy order until one does not fit (head-of-line)."""
        cfg = self.config
        kv = self.kv
        waiting = self.waiting
        if cfg.policy == "lpm" and waiting:
            waiting.rank_by_cached_prefix(kv.count_cached_tokens)
        while waiting:
            if budget <= 0 or len(self.running) >= cfg.max_num_seqs:
                return
            req = waiting.peek()
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
                return
            waiting.pop()
            if req.status == RequestStatus.WAITING:
                kv.num_queries += req.num_prompt_tokens
                kv.num_hits += num_cached
                req.num_cached_tokens = num_cached
                req.first_scheduled_time = now
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            batch.requests.append(req)
            batch.num_tokens.append(n)
            batch.num_computed.append(req.num_computed_tokens)
            batch.total_tokens += n
            budget -= n

    def decode_run_limit(self, batch: ScheduledBatch) -> int:
        """Most steps this batch could repeat unchanged: 1 unless it is a pure decode step.

        A run is valid only while nothing could change between its steps: no
        request finishes before the run's last step, and no waiting request
        could be admitted (whatever blocked it - budget, max_num_seqs, blocks -
        stays so while the same requests decode).
        """
        if not batch.can_extend:
            return 1
        reqs = batch.requests
        if any(c + 1 != r.num_tokens for r, c in zip(reqs, batch.num_computed)):
            return 1  # a one-token prompt chunk, not a decode
        return min(r.sampling_params.max_tokens - len(r.output_token_ids) for r in reqs)

    def extend_decode_run(self, batch: ScheduledBatch, max_steps: int) -> int:
        """Turn a pure decode step into a run of up to `max_steps` steps (at most `decode_run_limit`).

        The run is shortened so that every step's blocks are free now: no step
        of it would preempt. Returns the steps granted.
        """
        if max_steps <= 1:
            return 1
        reqs = batch.requests
        kv = self.kv
        bs = kv.block_size
        free = kv.num_free_blocks

        def extra_blocks(steps: int) -> int:
            return sum(-(-(r.num_computed_tokens + steps) // bs) - len(r.block_ids) for r in reqs)

        k = max_steps
        if extra_blocks(k) > free:
            lo, hi = 1, k  # extra_blocks(1) == 0: the first step is already allocated
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if extra_blocks(mid) <= free:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
        if k > 1:
            for r in reqs:
                kv.allocate_slots(r, k)
            batch.num_steps = k
        return k

    # ---- results -------------------------------------------------------------

    def update(self, batch: ScheduledBatch, result: StepResult, start_time: float) -> list[Request]:
        """Apply a step's results; returns the requests that finished."""
        kv = self.kv
        bs = kv.block_size
        steps = batch.num_steps
        times = result.step_end_offsets
        end_time = start_time + times[-1]
        first_time = start_time + times[0]
        sampled = result.sampled_token_ids
        synthetic = [SYNTHETIC_TOKEN] * steps
        running_status = RequestStatus.RUNNING
        finished: list[Request] = []
        for i, req in enumerate(batch.requests):
            if req.status is not running_status:
                continue  # finished from outside while the step ran
            c = req.num_computed_tokens = req.num_computed_tokens + batch.num_tokens[i] * steps
            if c // bs > req.num_committed_blocks:
                kv.commit(req)
            if c < req.num_tokens:
                continue  # a prompt chunk short of the end: nothing sampled
            if req.first_token_time is None:
                req.first_token_time = first_time
            if req.token_times is not None:
                req.token_times.extend(start_time + t for t in times)
            params = req.sampling_params
            if steps == 1 and not params.stop_token_ids:  # the common case, kept lean
                req.output_token_ids.append(SYNTHETIC_TOKEN if sampled is None else sampled[i][0])
                req.num_tokens += 1
                if req.num_tokens - len(req.prompt_token_ids) >= params.max_tokens:
                    self._finish(req, RequestStatus.FINISHED_LENGTH)
                    finished.append(req)
            elif self._append_tokens(req, synthetic if sampled is None else sampled[i]):
                finished.append(req)
        if finished:
            self.running = [r for r in self.running if not r.is_finished]
            for req in finished:
                req.finish_time = end_time
        return finished

    def _append_tokens(self, req: Request, tokens: list[int]) -> bool:
        """Append sampled tokens, stopping at max_tokens or a stop token; True if the request finished."""
        params = req.sampling_params
        stops = params.stop_token_ids
        for tok in tokens:
            req.append_output(tok)
            num_out = req.num_tokens - len(req.prompt_token_ids)
            if num_out >= params.max_tokens:
                self._finish(req, RequestStatus.FINISHED_LENGTH)
                return True
            if stops and tok in stops and num_out >= params.min_tokens:
                self._finish(req, RequestStatus.FINISHED_STOPPED)
                return True
        return False

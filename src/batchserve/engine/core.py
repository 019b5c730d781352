"""The step loop shared by real and simulated execution: schedule, execute, update."""

from __future__ import annotations

from ..core.batch import ScheduledBatch, StepResult
from ..core.scheduler import Scheduler
from ..executors.base import Executor
from ..request import Request

_INF = float("inf")


class Engine:
    """One replica: a scheduler and an executor, on the executor's clock.

    `now` is seconds on the engine's clock: wall time for a real executor,
    simulated time for the simulator (which advances it by predicted step
    durations).
    """

    def __init__(self, scheduler: Scheduler, executor: Executor, track_token_times: bool = False) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.track_token_times = track_token_times
        self.now = 0.0
        self.num_steps = 0
        self.num_iterations = 0  # step() calls; fewer than num_steps when decode runs are fast-forwarded
        self.outstanding_tokens = 0  # tokens still to compute (prompt + max_tokens budget), for routers
        self.last_batch: ScheduledBatch | None = None  # the latest step, for callers that stream its tokens
        self.last_result: StepResult | None = None

    def add_request(self, req: Request) -> None:
        self.scheduler.add_request(req)
        if self.track_token_times:
            req.token_times = []
        self.outstanding_tokens += req.num_prompt_tokens + req.sampling_params.max_tokens

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self, until: float = _INF) -> list[Request]:
        """Run one step (or a fast-forwarded run of decode steps ending before `until`).

        Returns the requests that finished. Raises RuntimeError if requests are
        pending but nothing can be scheduled, which would be a scheduler bug.
        """
        scheduler = self.scheduler
        batch = scheduler.schedule(self.now)
        if batch.is_empty:
            if scheduler.has_unfinished():
                raise RuntimeError(
                    f"scheduler stalled: {len(scheduler.running)} running, {len(scheduler.waiting)} waiting, "
                    f"{scheduler.kv.num_free_blocks} free blocks"
                )
            return []
        if batch.can_extend:
            limit = scheduler.decode_run_limit(batch)
            if limit > 1:
                limit = self.executor.max_decode_steps(batch, until - self.now, limit)
                scheduler.extend_decode_run(batch, limit)
        result = self.executor.execute(batch)
        self.last_batch, self.last_result = batch, result
        start = self.now
        self.now = start + result.duration
        finished = scheduler.update(batch, result, start)
        self.num_steps += batch.num_steps
        self.num_iterations += 1
        self.outstanding_tokens += (
            batch.num_preempted_tokens - batch.num_cached_tokens - batch.total_tokens * batch.num_steps
        )
        for req in finished:
            self.outstanding_tokens -= (
                req.num_prompt_tokens + req.sampling_params.max_tokens - req.num_computed_tokens
            )
        return finished

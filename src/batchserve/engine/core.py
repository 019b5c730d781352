"""The step loop shared by real and simulated execution: schedule, execute, update."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.batch import ScheduledBatch, StepResult
from ..core.scheduler import Scheduler
from ..executors.base import Executor
from ..request import Request


@dataclass
class StepOutput:
    """What one engine step did: the batch it scheduled, the executor's result, the requests that finished.

    `result` is None when nothing was scheduled (an idle engine).
    """

    batch: ScheduledBatch
    result: StepResult | None = None
    finished: list[Request] = field(default_factory=list)


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
        self.outstanding_tokens = 0  # tokens still to compute (prompt + max_tokens budget), for routers

    def add_request(self, req: Request) -> None:
        self.scheduler.add_request(req)
        if self.track_token_times:
            req.token_times = []
        self.outstanding_tokens += req.num_prompt_tokens + req.sampling_params.max_tokens

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> StepOutput:
        """Run one step: schedule, execute, update.

        Raises RuntimeError if requests are pending but nothing can be
        scheduled, which would be a scheduler bug.
        """
        return self._run(self.scheduler.schedule(self.now))

    def _run(self, batch: ScheduledBatch) -> StepOutput:
        """Execute a scheduled batch and apply its result, advancing the clock by the step's duration."""
        scheduler = self.scheduler
        if batch.is_empty:
            if scheduler.has_unfinished():
                raise RuntimeError(
                    f"scheduler stalled: {len(scheduler.running)} running, {len(scheduler.waiting)} waiting, "
                    f"{scheduler.kv.num_free_blocks} free blocks"
                )
            return StepOutput(batch)
        result = self.executor.execute(batch)
        start = self.now
        self.now = start + result.duration
        finished = scheduler.update(batch, result, start)
        self.num_steps += 1
        self.outstanding_tokens += (batch.num_preempted_tokens + batch.num_rejected_tokens - batch.num_cached_tokens
                                    - batch.total_tokens)
        for req in finished:
            self.outstanding_tokens -= (
                req.num_prompt_tokens + req.sampling_params.max_tokens - req.num_computed_tokens
            )
        return StepOutput(batch, result, finished)

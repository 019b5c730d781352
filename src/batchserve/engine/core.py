"""The step loop shared by real and simulated execution: schedule, execute, update."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.batch import ScheduledBatch, StepResult
from ..core.scheduler import Scheduler
from ..executors.base import AsyncExecutor, Executor, PendingResult
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

    overlaps_steps = False
    """Whether a step runs while the next is scheduled (async scheduling): a caller that times steps takes a step's
    span from its result (`StepResult.duration`), not the wall time of the call that returned it."""

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
        """Execute a scheduled batch and apply its result."""
        if batch.is_empty:
            return self._idle(batch)
        start = self.now
        return self._apply(batch, self.executor.execute(batch), start)

    def _idle(self, batch: ScheduledBatch) -> StepOutput:
        """Nothing was scheduled: fine when nothing is pending, a scheduler bug otherwise."""
        scheduler = self.scheduler
        if scheduler.has_unfinished():
            raise RuntimeError(
                f"scheduler stalled: {len(scheduler.running)} running, {len(scheduler.waiting)} waiting, "
                f"{scheduler.kv.num_free_blocks} free blocks"
            )
        return StepOutput(batch)

    def _apply(self, batch: ScheduledBatch, result: StepResult, start: float) -> StepOutput:
        """Apply an executed batch's result, advancing the clock to the step's end."""
        self.now = max(self.now, start + result.duration)
        finished = self.scheduler.update(batch, result, start)
        self.num_steps += 1
        self.outstanding_tokens += (batch.num_preempted_tokens + batch.num_rejected_tokens - batch.num_cached_tokens
                                    - batch.total_tokens)
        for req in finished:
            self.outstanding_tokens -= (
                req.num_prompt_tokens + req.sampling_params.max_tokens - req.num_computed_tokens
            )
        return StepOutput(batch, result, finished)


class AsyncEngine(Engine):
    """Async scheduling (vLLM's `async_scheduling`): the next step is scheduled while this one runs, and what the
    caller does with a step's output (detokenizing, stop strings, streaming) overlaps the next step's run.

    The executor launches a step (`execute_async`) and the engine waits for its result only after scheduling the
    next: on a GPU the host's scheduling and output work hide behind the device's. A step's update lands after
    the next step was scheduled, so a request that finishes in it has one more row scheduled; that row is
    dropped before the next step starts (`Scheduler.drop_finished`), except for a stop string or an abort
    found after the start, whose row runs and is discarded.
    """

    overlaps_steps = True

    def __init__(self, scheduler: Scheduler, executor: AsyncExecutor, track_token_times: bool = False) -> None:
        super().__init__(scheduler, executor, track_token_times)
        self.executor: AsyncExecutor = executor
        self._in_flight: tuple[ScheduledBatch, PendingResult, float] | None = None
        self._carried: ScheduledBatch | None = None
        """A scheduled batch whose rows all finished before it started but whose scheduling preempted requests:
        the next batch launched reports those preemptions."""

    def has_unfinished(self) -> bool:
        return self._in_flight is not None or super().has_unfinished()

    def step(self) -> StepOutput:
        """Apply the running step's result and start the next; returns the applied step."""
        scheduler = self.scheduler
        if self._in_flight is None:
            batch = scheduler.schedule(self.now)
            if batch.is_empty:
                return self._idle(batch)
            self._launch(batch)
        batch, pending, start = self._in_flight
        scheduler.assume_progress(batch)
        upcoming = scheduler.schedule(self.now)  # while `batch` runs
        try:
            result = pending.result()
        finally:
            self._in_flight = None
        output = self._apply(batch, result, start)
        scheduler.drop_finished(upcoming)
        if not upcoming.is_empty:
            self._launch(upcoming)
        elif upcoming.preempted:
            self._carried = upcoming
        return output

    def _launch(self, batch: ScheduledBatch) -> None:
        if self._carried is not None:
            batch.preempted[:0] = self._carried.preempted
            batch.num_preempted_tokens += self._carried.num_preempted_tokens
            self._carried = None
        self._in_flight = (batch, self.executor.execute_async(batch), self.now)

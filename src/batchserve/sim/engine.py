"""A simulated replica: the core engine's step, fast-forwarded over runs of pure decode steps."""

from __future__ import annotations

from ..engine import Engine, StepOutput
from .executor import DecodeRunExecutor
from .scheduler import SimScheduler

_INF = float("inf")


class SimEngine(Engine):
    """An Engine over a SimScheduler and an executor that can run decode steps back to back."""

    scheduler: SimScheduler
    executor: DecodeRunExecutor

    def __init__(self, scheduler: SimScheduler, executor: DecodeRunExecutor, track_token_times: bool = False) -> None:
        super().__init__(scheduler, executor, track_token_times)
        self.num_iterations = 0  # step() calls that ran a batch; fewer than num_steps when runs are fast-forwarded

    def wake(self, at: float) -> None:
        """A request arrives at `at` to this replica, which had no work: its clock moves there, and if it idled
        (`at` is later than its last step's end) its next step pays the wake-up."""
        if at > self.now:
            self.now = at
            self.executor.wake()

    def step(self, until: float = _INF) -> StepOutput:
        """Run one step, or a fast-forwarded run of decode steps that all start before `until`.

        `until` is the next time something outside may change the replica (an
        arrival the router may send here); the run's timings equal those of its
        steps taken one by one.
        """
        scheduler = self.scheduler
        batch = scheduler.schedule(self.now)
        limit = scheduler.decode_run_limit(batch)
        if limit > 1:
            scheduler.extend_decode_run(batch, self.executor.max_decode_steps(batch, until - self.now, limit))
        out = self._run(batch)
        if out.result is not None:
            self.num_iterations += 1
            more = batch.num_steps - 1  # the core step counted one step and its tokens
            self.num_steps += more
            self.outstanding_tokens -= batch.total_tokens * more
        return out

"""The executor protocol the engine drives."""

from __future__ import annotations

from typing import Protocol

from ..core.batch import ScheduledBatch, StepResult


class Executor(Protocol):
    def execute(self, batch: ScheduledBatch) -> StepResult:
        """Run (or predict) the batch's `num_steps` steps."""

    def max_decode_steps(self, batch: ScheduledBatch, horizon_s: float, limit: int) -> int:
        """How many (at most `limit`) decode steps of this batch may run back to back, all starting within `horizon_s`.

        A real executor answers 1 (it returns to the scheduler every step); the
        simulator fast-forwards up to the next event.
        """

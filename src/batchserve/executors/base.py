"""The executor protocol the engine drives."""

from __future__ import annotations

from typing import Protocol

from ..core.batch import ScheduledBatch, StepResult


class Executor(Protocol):
    def execute(self, batch: ScheduledBatch) -> StepResult:
        """Run (or predict) one step of the batch."""


class PendingResult(Protocol):
    def result(self) -> StepResult:
        """The step's result, waiting for it if it is still running."""


class AsyncExecutor(Executor, Protocol):
    def execute_async(self, batch: ScheduledBatch) -> PendingResult:
        """Read what the step needs from the batch and its requests now, and start it."""

"""The executor protocol the engine drives."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from ..core.batch import ScheduledBatch, StepResult


class Executor(Protocol):
    def execute(self, batch: ScheduledBatch) -> StepResult:
        """Run (or predict) one step of the batch."""


class AsyncExecutor(Executor, Protocol):
    def execute_async(self, batch: ScheduledBatch) -> Future[StepResult]:
        """Read what the step needs from the batch and its requests now, and run it in the background."""

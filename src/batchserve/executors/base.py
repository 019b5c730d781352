"""The executor protocol the engine drives."""

from __future__ import annotations

from typing import Protocol

from ..core.batch import ScheduledBatch, StepResult


class Executor(Protocol):
    def execute(self, batch: ScheduledBatch) -> StepResult:
        """Run (or predict) one step of the batch."""

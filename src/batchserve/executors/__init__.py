"""Executors turn a ScheduledBatch into a StepResult: for real (torch) or by prediction (sim)."""

from .base import Executor

__all__ = ["Executor"]

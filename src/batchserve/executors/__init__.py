"""Executors turn a ScheduledBatch into a StepResult: the protocol and the real (torch) executor; the simulator's is `sim.executor`."""

from .base import Executor

__all__ = ["Executor"]

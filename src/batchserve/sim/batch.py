"""The simulator's step messages: a batch that also counts lazily tracked decodes and may span a run of steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.batch import ScheduledBatch, StepResult
from .decode_cohort import DecodeCohort


@dataclass
class SimBatch(ScheduledBatch):
    """A ScheduledBatch plus the decodes a DecodeCohort tracks lazily, counted rather than listed.

    `num_lazy_decodes` requests each compute one token, attending to
    `lazy_decode_context` tokens in all; `lazy_adapters` counts those under
    each LoRA adapter. With `num_steps > 1` the batch is a
    run of identically shaped decode steps (fast-forward).
    """

    num_lazy_decodes: int = 0
    lazy_decode_context: int = 0
    lazy_adapters: dict[int | str, int] = field(default_factory=dict)
    """LoRA adapter id -> lazy decodes under it (the cohort's live count, read when the step runs)."""
    cohort: DecodeCohort | None = None
    """The cohort the lazy decodes belong to: it knows how the engine's attention groups (and pads) them."""
    num_steps: int = 1
    can_extend: bool = False  # a pure decode step whose successors would be identical

    @property
    def is_empty(self) -> bool:
        return not self.requests and not self.num_lazy_decodes


@dataclass
class DecodeRunResult(StepResult):
    """The result of a fast-forwarded run: `step_end_offsets` are each step's end, from the run's start.

    `duration` is the whole run (the last offset).
    """

    step_end_offsets: list[float] = field(default_factory=list)

    @classmethod
    def from_offsets(cls, step_end_offsets: list[float]) -> DecodeRunResult:
        return cls(step_end_offsets[-1], step_end_offsets=step_end_offsets)

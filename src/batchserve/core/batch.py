"""The typed messages between scheduler and executor: ScheduledBatch in, StepResult out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..request import Request


@dataclass
class ScheduledBatch:
    """One step's work, as the executor needs it.

    `requests[i]` computes `num_tokens[i]` new tokens starting at position
    `num_computed[i]`. A simulation's lazily tracked decodes are counted, not
    listed: `num_lazy_decodes` requests each compute one token, attending to
    `lazy_decode_context` tokens in all. With `num_steps > 1` the batch is a
    run of identical-shaped decode steps (the simulator's fast-forward).
    """

    requests: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    num_computed: list[int] = field(default_factory=list)
    num_lazy_decodes: int = 0
    lazy_decode_context: int = 0
    preempted: list[Request] = field(default_factory=list)
    num_steps: int = 1
    total_tokens: int = 0
    num_preempted_tokens: int = 0  # computed tokens thrown away by this step's preemptions
    num_cached_tokens: int = 0  # tokens admitted requests took from the prefix cache instead of computing
    can_extend: bool = False  # a pure decode step whose successors would be identical

    @property
    def is_empty(self) -> bool:
        return not self.requests and not self.num_lazy_decodes

    @property
    def num_computed_prompt_tokens(self) -> int:
        """Prompt tokens this step runs through the model (recomputation after preemption included)."""
        return sum(
            min(n, req.num_prompt_tokens - c)
            for req, n, c in zip(self.requests, self.num_tokens, self.num_computed)
            if c < req.num_prompt_tokens
        )


@dataclass
class StepResult:
    """What an executor returns: sampled tokens and how long the step took.

    `sampled_token_ids[i]` holds the tokens of `batch.requests[i]` (unused for
    a prompt chunk that does not reach the end); `None` means synthetic tokens
    (the simulator). `step_end_offsets` are the end times of each of the
    batch's `num_steps` steps, relative to its start.
    """

    step_end_offsets: list[float]
    sampled_token_ids: list[list[int]] | None = None
    logprobs: list[dict[int, float] | None] | None = None  # per request, for those that asked

    @property
    def duration(self) -> float:
        return self.step_end_offsets[-1]

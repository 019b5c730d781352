"""The typed messages between scheduler and executor: ScheduledBatch in, StepResult out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..request import Request

SYNTHETIC_TOKEN = 0
"""The token the scheduler appends when an executor samples none (the simulator's token values do not matter)."""


@dataclass
class ScheduledBatch:
    """One step's work, as the executor needs it.

    `requests[i]` computes `num_tokens[i]` new tokens starting at position
    `num_computed[i]`. A speculating request's last `len(spec_token_ids[req])`
    of them are draft tokens to verify, after its one known uncomputed token.
    `num_known[i]` is the request's token count when scheduled: a row samples
    when its chunk reaches it (`samples`). The step's update adds tokens to
    the request, so after the step only the batch still knows which rows did.
    """

    requests: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    num_computed: list[int] = field(default_factory=list)
    num_known: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    total_tokens: int = 0
    num_preempted_tokens: int = 0  # computed tokens thrown away by this step's preemptions
    num_cached_tokens: int = 0  # tokens admitted requests took from the prefix cache instead of computing
    spec_token_ids: dict[Request, list[int]] = field(default_factory=dict)
    """Draft tokens per speculating request (speculative decoding); absent requests have none."""
    num_rejected_tokens: int = 0  # scheduled draft positions the verification rejected (set by the update)
    shared_decode_keys: int = 0
    """K/V tokens the decode rows read again: a block several decode rows hold (a prefix-cache hit they share) is
    read once per row, and every read after its first finds it in the CPU's caches (`KVCacheManager.shared_blocks`)."""

    assumed: bool = False
    """Async scheduling: the scheduler counted this batch's tokens as computed before it ran
    (`Scheduler.assume_progress`), so its update does not add them again."""
    placeholders: list[Request] = field(default_factory=list)
    """Async scheduling: requests whose token count holds a placeholder for the token this step samples."""

    def __post_init__(self) -> None:
        if not self.num_known:  # a batch built by hand, before any update: the requests' counts are the known ones
            self.num_known = [req.num_tokens for req in self.requests]

    def add(self, req: Request, num_tokens: int, num_computed: int) -> None:
        """Schedule `num_tokens` of `req` from position `num_computed`."""
        self.requests.append(req)
        self.num_tokens.append(num_tokens)
        self.num_computed.append(num_computed)
        self.num_known.append(req.num_tokens)
        self.total_tokens += num_tokens

    def remove(self, req: Request) -> int:
        """Unschedule `req` (preempted after it was added); returns the tokens it had taken (0 if absent)."""
        self.spec_token_ids.pop(req, None)
        for i, r in enumerate(self.requests):
            if r is req:
                n = self.num_tokens[i]
                del self.requests[i], self.num_tokens[i], self.num_computed[i], self.num_known[i]
                self.total_tokens -= n
                return n
        return 0

    def samples(self, i: int) -> bool:
        """Whether row i's chunk ends at its request's last known token, so the step samples the next one
        (a verification's drafts run past it: it samples too, at each draft)."""
        return self.num_computed[i] + self.num_tokens[i] - len(self.spec_token_ids.get(self.requests[i], ())) \
            == self.num_known[i]

    @property
    def is_empty(self) -> bool:
        return not self.requests

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
    a prompt chunk that does not reach the end): one, or for a speculating
    request its accepted drafts plus one more; `None` means synthetic tokens
    (`SYNTHETIC_TOKEN`, for an executor that only predicts time).
    """

    duration: float
    sampled_token_ids: list[list[int]] | None = None
    logprobs: list[dict[int, float] | None] | None = None  # per request, for those that asked
    prompt_logprobs: list[list[dict[int, float]] | None] | None = None
    """Per request that asked: one entry per prompt token this step's chunk predicts, in order."""
    stop_rows: frozenset[int] = frozenset()
    """Rows whose sampled token completes their output (a structured-output grammar allows nothing
    after it): the scheduler finishes them as stopped."""

"""Requests, sampling parameters and statuses: the plain data every layer shares."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on the output's language (vLLM's `StructuredOutputsParams`): exactly one field is set.

    Checked for shape here; compiled (and so checked for meaning: schema keywords, regex features,
    grammar syntax) when the request is added, so a bad one fails that request alone. A constrained
    request's `logprobs` are over the tokens its grammar allows: the bitmask goes on the logits
    before the sampler, as in vLLM.
    """

    json: str | dict | None = None
    """A JSON schema, as a dict or a JSON string: the output is one JSON value that validates against it."""
    regex: str | None = None
    """The output matches this regular expression in full (Rust `regex` syntax: no look-around, no backrefs)."""
    choice: list[str] | None = None
    """The output is exactly one of these strings."""
    grammar: str | None = None
    """A context-free grammar in GBNF (llama.cpp, `root ::= ...`) or Lark (`start: ...`) syntax."""
    json_object: bool | None = None
    """True: the output is any JSON object (OpenAI's `response_format={"type": "json_object"}`)."""
    disable_any_whitespace: bool = False
    """JSON without whitespace between tokens: a small model cannot ramble in indentation."""

    def __post_init__(self) -> None:
        kinds = [k for k in _CONSTRAINT_KINDS if getattr(self, k) not in (None, False)]
        if len(kinds) != 1:
            raise ValueError(
                f"structured_outputs needs exactly one of {', '.join(_CONSTRAINT_KINDS)}; got {kinds or 'none'}"
            )
        if self.choice is not None and (
            not isinstance(self.choice, (list, tuple)) or not self.choice
            or not all(isinstance(c, str) for c in self.choice)
        ):
            raise ValueError(f"structured_outputs.choice must be a non-empty list of strings, got {self.choice!r}")

    @property
    def kind(self) -> str:
        """Which constraint is set: "json", "regex", "choice", "grammar" or "json_object"."""
        return next(k for k in _CONSTRAINT_KINDS if getattr(self, k) not in (None, False))


_CONSTRAINT_KINDS = ("json", "regex", "choice", "grammar", "json_object")


MAX_SEED = 2**63 - 1
"""Seeds are stored in a signed 64-bit integer by the generators that use them."""
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop; names follow vLLM/OpenAI so scripts move over."""

    n: int = 1
    """Completions per prompt; they share the prompt's KV blocks."""
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    """Per-request seed: the same seed gives the same tokens whatever the batch-mates."""
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    """Return this many top log-probabilities per generated token (plus the sampled one)."""
    prompt_logprobs: int | None = None
    """Return this many top log-probabilities per prompt token (plus the prompt's own); such a request
    computes its whole prompt instead of reading the prefix cache, since cached positions have no logits."""
    logit_bias: dict[int, float] | None = None
    """Added to these token ids' logits before any other processing (OpenAI's range: -100 bans, 100 forces)."""
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    """Constrain the output to a JSON schema, regex, choice or grammar; None: free text."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:  # vLLM's and OpenAI's "no stop strings"
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        for name in _FLOAT_FIELDS:  # NaN passes every range check below, so rule it out first
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2^63 - 1], got {self.seed}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty}")
        if not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2:
            raise ValueError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in [0, 20], got {self.logprobs}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise ValueError(f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for token, bias in (self.logit_bias or {}).items():
            if not math.isfinite(bias) or not -100 <= bias <= 100:
                raise ValueError(f"logit_bias of token {token} must be in [-100, 100], got {bias}")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise TypeError(
                f"structured_outputs must be a StructuredOutputsParams, got {type(self.structured_outputs).__name__}"
            )


class Request:
    """One sequence as the scheduler sees it: tokens known, tokens computed, blocks held.

    Phase-free (as in vLLM v1): a request has `num_tokens` known tokens and
    `num_computed_tokens` whose KV is in the cache; prefill and decode are the
    same operation with different counts. Timestamps are in the engine's clock
    (wall seconds for the real engine, simulated seconds for the simulator).
    """

    __slots__ = (
        "request_id", "prompt_token_ids", "sampling_params", "num_tokens", "arrival_time", "priority",
        "deadline", "adapter_id", "output_token_ids", "num_computed_tokens", "status",
        "block_ids", "block_hashes", "num_committed_blocks", "num_cached_tokens", "num_preemptions",
        "first_scheduled_time", "first_token_time", "finish_time",
        "token_times", "__weakref__",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        arrival_time: float = 0.0,
        priority: int = 0,
        deadline: float | None = None,
        adapter_id: int | str | None = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r} has an empty prompt; give at least one token")
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.arrival_time = arrival_time
        self.priority = priority  # lower value runs first (vLLM convention)
        self.deadline = deadline  # absolute time the first token is due, for `edf`
        self.adapter_id = adapter_id  # part of every block hash: adapters never share KV
        self.output_token_ids: list[int] = []
        # len(prompt) + len(output), kept as a field because the scheduler reads it every step;
        # only `append_output` and `extend_output` may grow the output.
        self.num_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.status = RequestStatus.WAITING
        self.block_ids: list[int] = []  # block table; owned by the KV cache manager
        self.block_hashes: list[int] = []  # hashes of full blocks, filled lazily
        self.num_committed_blocks = 0  # leading blocks already registered in the prefix cache
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first admission
        self.num_preemptions = 0
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.token_times: list[float] | None = None  # per-token times, only when asked

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.num_tokens += 1

    def extend_output(self, token_ids: list[int]) -> None:
        """Append several tokens at once (a simulation catching up on steps it did not track one by one)."""
        self.output_token_ids.extend(token_ids)
        self.num_tokens += len(token_ids)

    def truncate_output(self, num_dropped: int) -> None:
        """Drop the last output tokens (a stop string ended the output inside a speculated run)."""
        del self.output_token_ids[len(self.output_token_ids) - num_dropped:]
        self.num_tokens -= num_dropped

    def tokens(self, start: int, end: int) -> list[int]:
        """Token ids at positions [start, end) of prompt + output, without concatenating the two."""
        prompt, num_prompt = self.prompt_token_ids, len(self.prompt_token_ids)
        if end <= num_prompt:
            return prompt[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : end - num_prompt]
        return prompt[start:] + self.output_token_ids[: end - num_prompt]

    @property
    def is_finished(self) -> bool:
        return self.status >= RequestStatus.FINISHED_STOPPED

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, prompt={self.num_prompt_tokens}, "
            f"out={self.num_output_tokens}, computed={self.num_computed_tokens}, {self.status.name})"
        )

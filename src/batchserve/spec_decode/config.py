"""`SpeculativeConfig`: vLLM's `speculative_config` keys, checked once at engine start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import json_config

SPECULATIVE_METHODS = ("ngram", "draft")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str | None = None
    """How drafts are proposed: "ngram" looks the context's last tokens up earlier in the same context;
    "draft" runs `model`. None: "draft" when a model is given, else "ngram"."""
    model: str | None = None
    """The draft model (a HF directory or .gguf file, or "tiny"): smaller, with the target's tokenizer."""
    num_speculative_tokens: int = 4
    """Most draft tokens per request per step (k); each step verifies k + 1 positions per request."""
    prompt_lookup_max: int = 4
    """Longest n-gram matched against the context (tried first)."""
    prompt_lookup_min: int = 1
    """Shortest n-gram matched; below it a request gets no draft this step."""
    max_batch_size: int = 8
    """Running requests above which no request speculates: a large batch is compute-bound, and verifying
    rejected drafts would only slow it (the best k shrinks as the batch grows). On a 2-core CPU with
    SmolLM2, batch 16 at k=2 measured 0.94x plain decoding (bench/RESULTS.md)."""
    min_acceptance_rate: float = 0.2
    """A request whose recent drafts were accepted at a lower rate proposes only one token until it recovers."""

    def __post_init__(self) -> None:
        if self.method is None:
            object.__setattr__(self, "method", "ngram" if self.model is None else "draft")
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative method {self.method!r} is not supported; choose one of "
                             f"{', '.join(SPECULATIVE_METHODS)}")
        if (self.method == "draft") != (self.model is not None):
            raise ValueError('speculative method "draft" needs a "model" (the draft model) and "ngram" takes none')
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(f"need 1 <= prompt_lookup_min ({self.prompt_lookup_min}) <= prompt_lookup_max "
                             f"({self.prompt_lookup_max})")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.min_acceptance_rate <= 1:
            raise ValueError(f"min_acceptance_rate must be in [0, 1], got {self.min_acceptance_rate}")

    @classmethod
    def of(cls, value: SpeculativeConfig | dict[str, Any] | str | None) -> SpeculativeConfig | None:
        """From a dict or a JSON object string (vLLM's `--speculative-config`); None stays None (off)."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        return cls(**json_config(value, cls, "speculative config", '{"method": "ngram", "num_speculative_tokens": 4}'))

"""Per-request grammar state for one engine: a matcher per constrained request, bitmasks per step.

Matcher state is exactly the request's output tokens. Preemption keeps those
tokens (recompute re-prefills prompt + output and samples the next one), so a
preempted request's matcher stays valid and needs no rewind; `n` > 1 siblings
each get their own matcher from the one compiled grammar; prefix caching
shares prompt KV, which a grammar never sees.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from ..request import Request, StructuredOutputsParams
from .grammar import GrammarCompiler

logger = logging.getLogger(__name__)


@dataclass
class GrammarBitmask:
    """Allowed next tokens of the constrained rows of one step: bit `t % 32` of word `t // 32` set = allowed."""

    rows: list[int]
    """Indices (into the requests asked about) of the constrained rows, in bitmask order."""
    bitmask: np.ndarray
    """[len(rows), ceil(vocab / 32)] int32."""


class StructuredOutputManager:
    """Compiles constraints (once per distinct spec), owns the matchers, fills bitmasks, consumes tokens.

    The llguidance tokenizer is built on the first constrained request, so engines that never
    see one pay nothing. `num_threads` sizes llguidance's pool for filling masks and consuming
    tokens in parallel (None: its default, 80% of the CPUs).
    """

    def __init__(
        self, make_tokenizer: Callable[[], llguidance.LLTokenizer], cache_size: int = 256,
        num_threads: int | None = None,
    ) -> None:
        self._make_tokenizer = make_tokenizer
        self._cache_size = cache_size
        self._num_threads = num_threads
        self._compiler: GrammarCompiler | None = None
        self._executor: llguidance.LLExecutor | None = None
        # Dropped with the request, like the executor's per-request generators.
        self._matchers: weakref.WeakKeyDictionary[Request, llguidance.LLMatcher] = weakref.WeakKeyDictionary()
        self._bitmask = np.empty((0, 0), dtype=np.int32)  # reused across steps, grown on demand

    @property
    def compiler(self) -> GrammarCompiler:
        if self._compiler is None:
            self._compiler = GrammarCompiler(self._make_tokenizer(), self._cache_size)
            self._executor = llguidance.LLExecutor(self._num_threads)
        return self._compiler

    def compile(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        """Compile (or find in the cache) a constraint; ValueError if it is invalid."""
        return self.compiler.compile(params)

    def add_request(self, req: Request) -> None:
        """Give a request with `structured_outputs` its own matcher; ValueError if the constraint is invalid."""
        params = req.sampling_params.structured_outputs
        if params is not None:
            self._matchers[req] = self.compile(params).deep_copy()

    def is_constrained(self, req: Request) -> bool:
        return req in self._matchers

    def grammar_bitmask(self, requests: Sequence[Request]) -> GrammarBitmask | None:
        """Next-token bitmasks of the constrained requests among `requests` (None if there are none).

        Filled in llguidance's thread pool with the GIL released, so a caller can run this in a
        thread while the forward pass computes. The array is reused by the next call.
        """
        rows = [i for i, req in enumerate(requests) if req in self._matchers]
        if not rows:
            return None
        vocab = self.compiler.tokenizer.vocab_size
        shape = llg_numpy.get_bitmask_shape(len(rows), vocab)
        if self._bitmask.shape[0] < shape[0] or self._bitmask.shape[1] != shape[1]:
            self._bitmask = np.empty((max(shape[0], 2 * self._bitmask.shape[0]), shape[1]), dtype=np.int32)
        bitmask = self._bitmask[: shape[0]]
        matchers = [(self._matchers[requests[i]], k) for k, i in enumerate(rows)]
        llg_numpy.fill_next_token_bitmask_par(self._executor, matchers, bitmask)
        return GrammarBitmask(rows, bitmask)

    def accept_tokens(self, requests: Sequence[Request], token_ids: Sequence[int]) -> list[int]:
        """Advance the constrained requests' matchers by their sampled tokens; the indices whose grammar is complete.

        Complete means nothing but EOS may follow (the last token closed the grammar, or EOS was
        sampled in an accepting state): the request's output is done. A token the grammar rejects
        (only possible if every allowed token had zero probability) also ends it, as llguidance
        stops an errored matcher.
        """
        rows = [i for i, req in enumerate(requests) if req in self._matchers]
        if not rows:
            return []
        matchers = [self._matchers[requests[i]] for i in rows]
        self._executor.consume_token_par([(m, token_ids[i]) for m, i in zip(matchers, rows)])
        for m, i in zip(matchers, rows):
            if m.is_error():
                logger.warning("request %s left its grammar: %s", requests[i].request_id, m.get_error())
        return [i for m, i in zip(matchers, rows) if m.is_stopped()]

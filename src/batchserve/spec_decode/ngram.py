"""Prompt-lookup (n-gram) proposals: copy what followed the last match of the context's own suffix.

No model: when a request's last n tokens occurred earlier in its prompt or output, the tokens that
followed that occurrence are the draft. Summaries, rewrites and code edits copy long runs, so
drafts there are often right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..request import Request


class NgramProposer:
    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> list[list[int]]:
        return [self.propose_one(req.tokens(0, req.num_tokens), n) if n > 0 else [] for req, n in zip(requests, k)]

    def release(self, request: Request) -> None:
        """Nothing is kept per request."""

    def propose_one(self, tokens: list[int], k: int) -> list[int]:
        """The `k` tokens after the latest earlier match of the longest suffix n-gram (max_n down to min_n)."""
        length = len(tokens)
        if length < self.min_n + 1:
            return []
        context = np.asarray(tokens)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            # windows starting at 0 .. length-n-1: every earlier n-gram that has a token after it
            windows = sliding_window_view(context[:-1], n)
            hits = np.flatnonzero((windows == context[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return tokens[start:start + k]
        return []

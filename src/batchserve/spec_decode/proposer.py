"""The one interface every draft source implements (n-gram lookup now; a draft model or EAGLE heads later)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..request import Request


class Proposer(Protocol):
    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> list[list[int]]:
        """Up to `k[i]` draft tokens to follow each request's known tokens (fewer, or none, when unsure)."""
        ...

    def release(self, request: Request) -> None:
        """Forget a finished request (a draft model frees its KV blocks)."""
        ...

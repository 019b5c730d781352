"""Which flat-batch token counts a process has run: the CPU engine pays for each new one (torch-free).

oneDNN (torch's CPU GEMMs, prepacked or not) builds its kernels per input row
count and caches them for the process, so the first step of a new token count
costs several milliseconds more than the next one: on `tiny` a 37-token prefill
took 9.8 ms, then 4.1 and 3.0 ms. Prompts of many lengths meet this at almost
every prefill and mixed step; the repeated decode batch sizes rarely do. The
cache is bounded (least recently used kernels go), so a count not run for a
while is new again. The real side (calibrate, job step logs) and the simulator
count new shapes by this one rule.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable

KERNEL_CACHE_TOKEN_COUNTS = 160
"""Token counts whose kernels oneDNN's primitive cache holds at its default capacity (1,024 kernels): on `tiny`
a prompt length run again after 120 other lengths was still cached, after 200 its kernels were built again
(4.3-5.6 ms instead of 1.9-2.6, measured 2026-12-02). Scaled by `ONEDNN_PRIMITIVE_CACHE_CAPACITY` where set."""


def kernel_cache_token_counts() -> int:
    """How many token counts' kernels this process's oneDNN keeps (its primitive cache capacity, in counts)."""
    capacity = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "")
    return max(1, KERNEL_CACHE_TOKEN_COUNTS * int(capacity) // 1024) if capacity.isdigit() else KERNEL_CACHE_TOKEN_COUNTS


class SeenTokenCounts:
    """The token counts whose kernels one process (or one simulated replica) holds: the `capacity` most recently
    run."""

    def __init__(self, counts: Iterable[int] = (), capacity: int | None = None) -> None:
        self.capacity = kernel_cache_token_counts() if capacity is None else capacity
        self._seen: OrderedDict[int, None] = OrderedDict()
        for n in counts:
            self.first_run(n)

    def first_run(self, num_tokens: int) -> int:
        """1 if a step of `num_tokens` tokens finds no kernels for its count (and now builds them), else 0."""
        if num_tokens in self._seen:
            self._seen.move_to_end(num_tokens)
            return 0
        self._seen[num_tokens] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return 1

    def snapshot(self) -> tuple[int, ...]:
        """The counts held, least recently run first (a copy that `SeenTokenCounts(snapshot)` restores)."""
        return tuple(self._seen)

    def copy(self) -> SeenTokenCounts:
        """An independent record that starts where this one is."""
        return SeenTokenCounts(self._seen, self.capacity)


RUN_IN_THIS_PROCESS = SeenTokenCounts()
"""The flat token counts the real engine has run in this process (its executor records every step's): a
simulated twin of it started later in the process (`validate`) starts with their kernels built, as the engine
does."""

"""Which flat-batch token counts a process has run: the CPU engine pays once for each new one (torch-free).

oneDNN (torch's CPU GEMMs, prepacked or not) builds its kernels per input row
count and caches them for the process, so the first step of a new token count
costs several milliseconds more than the next one: on `tiny` a 37-token prefill
took 9.8 ms, then 4.1 and 3.0 ms. Prompts of many lengths meet this at almost
every prefill and mixed step; the repeated decode batch sizes rarely do. The
real side (calibrate, job step logs) and the simulator count new shapes by
this one rule.
"""

from __future__ import annotations


class SeenTokenCounts:
    """The token counts run so far in one process (or by one simulated replica)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def first_run(self, num_tokens: int) -> int:
        """1 if a step of `num_tokens` tokens has not run before (and remember it), else 0."""
        if num_tokens in self._seen:
            return 0
        self._seen.add(num_tokens)
        return 1

"""Waiting-queue policies: they only order and pick victims, never touch blocks.

- `fcfs`: arrival order.
- `priority`: lower `priority` value first, then arrival (vLLM's convention).
- `edf`: earliest deadline (the time the first token is due) first.
- `lpm`: longest cached prefix first (SGLang), ranked over a bounded window.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from ..request import Request

_INF = float("inf")


def _fcfs_key(req: Request) -> tuple:
    return (req.arrival_time,)


def _priority_key(req: Request) -> tuple:
    return (req.priority, req.arrival_time)


def _edf_key(req: Request) -> tuple:
    return (_INF if req.deadline is None else req.deadline, req.arrival_time)


POLICY_KEYS: dict[str, Callable[[Request], tuple]] = {
    "fcfs": _fcfs_key,
    "priority": _priority_key,
    "edf": _edf_key,
    "lpm": _fcfs_key,  # lpm ranks a window of the fcfs order by cache hits each step
}


class WaitingQueue:
    """Requests waiting for admission, served in policy order.

    A heap keyed by the policy's static key; a preempted request keeps its key,
    so under fcfs it returns ahead of later arrivals. For `lpm` the scheduler
    calls `rank_by_cached_prefix` before admitting, which reorders the window.
    """

    def __init__(self, policy: str, lpm_window: int = 256) -> None:
        self.policy = policy
        self.key = POLICY_KEYS[policy]
        self.lpm_window = lpm_window
        self._heap: list[tuple[tuple, int, Request]] = []
        self._seq = itertools.count()
        self._ranked: list[Request] | None = None  # lpm order for the current step
        self._skipped: list[tuple[tuple, int, Request]] = []  # stepped over this step, entries kept for unskip

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self):
        return (entry[2] for entry in self._heap)

    def add(self, req: Request) -> None:
        heapq.heappush(self._heap, (self.key(req), next(self._seq), req))
        self._ranked = None

    def rank_by_cached_prefix(self, cached_tokens: Callable[[Request], int]) -> None:
        """`lpm`: order the first `lpm_window` requests (fcfs) by cached prefix length, longest first."""
        window = [e[2] for e in heapq.nsmallest(self.lpm_window, self._heap)]
        window.sort(key=cached_tokens, reverse=True)  # stable: ties stay in arrival order
        self._ranked = window

    def peek(self) -> Request:
        if self._ranked:
            return self._ranked[0]
        return self._heap[0][2]

    def pop(self) -> Request:
        return self._pop_entry()[2]

    def _pop_entry(self) -> tuple[tuple, int, Request]:
        if self._ranked:
            req = self._ranked.pop(0)
            self._ranked = self._ranked or None
            return self._take(req)
        return heapq.heappop(self._heap)

    @property
    def num_skipped(self) -> int:
        return len(self._skipped)

    def skip(self) -> None:
        """Step over the head for this step (an admission check refused it); `unskip` puts it back in place."""
        self._skipped.append(self._pop_entry())

    def unskip(self) -> None:
        """Return the requests skipped this step to their places in the queue."""
        for entry in self._skipped:
            heapq.heappush(self._heap, entry)
        if self._skipped:
            self._skipped.clear()
            self._ranked = None

    def remove(self, req: Request) -> None:
        self._take(req)

    def _take(self, req: Request) -> tuple[tuple, int, Request]:
        for i, entry in enumerate(self._heap):
            if entry[2] is req:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return entry
        raise KeyError(req.request_id)

    def victim(self, running: dict[Request, None]) -> Request:
        """The running request to preempt first: the one this policy ranks last.

        Ties go to the most recently admitted request, which has the least work
        to lose; preempting the oldest on a tie can make two requests preempt
        each other forever.
        """
        return max(reversed(running), key=self.key)

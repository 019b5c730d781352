"""Requests in steady decode whose per-step progress is implicit (synthetic tokens only).

In a simulation every decoding request advances exactly one token per step
and its token values do not matter, so per-request work is only needed at
events: when a request needs its next KV block and when it reaches
max_tokens. The cohort keeps a tick `clock` (decode steps run) and, per
member, the clock and computed-token count at which it joined; `sync`
materialises a member's state (computed tokens, synthetic outputs) on demand.
This turns a step's cost from O(running requests) into O(events).

The engine's decode attention groups rows by key count and pads each group to
its longest row (`attention_layout.decode_groups`). Every member's key count
grows by one per tick, so their order never changes: the cohort keeps the
members' key offsets sorted and finds the groups of any tick by bisection, in
O(groups x log members) rather than a pass over every member.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import Counter

import numpy as np

from ..attention_layout import decode_layout
from ..core.batch import SYNTHETIC_TOKEN
from ..request import Request


class _Member:
    """One membership of a request; entries in the event queues go stale once it is no longer `active`.

    A member computes token position computed0 + (t - clock0) at tick t and
    has made outputs0 + (clock - clock0) outputs once the clock reads `clock`.
    """

    __slots__ = ("active", "block_ids", "clock0", "computed0", "req")

    def __init__(self, req: Request, clock0: int) -> None:
        self.req = req
        self.clock0 = clock0
        self.computed0 = req.num_computed_tokens
        self.active = True
        self.block_ids = tuple(req.block_ids)  # the blocks it joined with; those it takes later no one shares

    @property
    def key_offset(self) -> int:
        """Its keys at tick t (its computed tokens plus the one it computes) are key_offset + t + 1."""
        return self.computed0 - self.clock0


class DecodeCohort:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.clock = 0
        self.members: dict[Request, _Member] = {}
        self.context = 0  # sum of members' num_computed_tokens at the current clock
        self.adapters: dict[int | str, int] = {}  # LoRA adapter id -> members decoding under it (base rows absent)
        self.block_readers: Counter[int] = Counter()  # block id -> members holding it (since they joined)
        self.num_shared_blocks = 0  # members' block reads beyond each block's first: sum of (readers - 1)
        self._finish: list[tuple[int, int, _Member]] = []  # (clock at which it finishes, seq, member)
        # tick -> members needing a new block then; a need is never more than block_size ticks away,
        # so buckets beat a heap. Entries of members that left are skipped on pop.
        self._blocks: dict[int, list[_Member]] = {}
        self._seq = itertools.count()
        self._key_offsets: list[int] = []  # members' key offsets, sorted
        self._key_array: np.ndarray | None = None  # the same as an array, rebuilt after a join or leave
        # (clock, ratio) -> a run's padded keys and group counts
        self._run_keys: tuple[tuple[int, float], np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, req: Request) -> bool:
        return req in self.members

    # The ticks at which a member finishes and needs its next block are unchanged by `sync`,
    # which moves clock0 and computed0 together.

    def join(self, req: Request) -> None:
        """Add a request that just sampled a token and will decode from the next tick."""
        m = self.members[req] = _Member(req, self.clock)
        self.context += req.num_computed_tokens
        if req.adapter_id is not None:
            self.adapters[req.adapter_id] = self.adapters.get(req.adapter_id, 0) + 1
        readers = self.block_readers
        for bid in m.block_ids:
            self.num_shared_blocks += bid in readers
            readers[bid] += 1
        bisect.insort(self._key_offsets, m.key_offset)
        self._key_array = self._run_keys = None
        outputs0 = m.computed0 + 1 - len(req.prompt_token_ids)
        heapq.heappush(self._finish, (m.clock0 + req.sampling_params.max_tokens - outputs0, next(self._seq), m))
        self.push_block_needs([req])

    def computed(self, req: Request) -> int:
        """A member's num_computed_tokens as of the clock (its field lags until `sync`)."""
        m = self.members[req]
        return m.computed0 + self.clock - m.clock0

    def sync(self, req: Request) -> None:
        """Bring a member's num_computed_tokens and outputs up to the clock."""
        m = self.members[req]
        advance = self.clock - m.clock0
        if advance:
            req.num_computed_tokens = m.computed0 + advance
            req.extend_output([SYNTHETIC_TOKEN] * advance)
            m.clock0 = self.clock
            m.computed0 = req.num_computed_tokens

    def leave(self, req: Request) -> None:
        """Remove a member (finished, preempted or aborted), its state synced; its queue entries go stale."""
        self.sync(req)
        m = self.members.pop(req)
        m.active = False
        self.context -= req.num_computed_tokens
        readers = self.block_readers
        for bid in m.block_ids:
            if readers[bid] == 1:
                del readers[bid]
            else:
                readers[bid] -= 1
                self.num_shared_blocks -= 1
        del self._key_offsets[bisect.bisect_left(self._key_offsets, m.key_offset)]
        self._key_array = self._run_keys = None
        aid = req.adapter_id
        if aid is not None:
            left = self.adapters.pop(aid) - 1
            if left:
                self.adapters[aid] = left

    def _valid_top(self) -> tuple[int, int, _Member] | None:
        heap = self._finish
        while heap:
            entry = heap[0]
            if entry[2].active:
                return entry
            heapq.heappop(heap)  # stale: the member left
        return None

    def layout(self, ratio: float, steps: int = 1, extra: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Keys the engine's grouped decode attention reads, and its groups (calls per layer), in each of the next
        `steps` ticks (from the clock).

        `extra`: key counts of decodes outside the cohort that share the first tick's grouping (then steps is 1).
        A run's layout is kept until the cohort changes: a fast-forward asks for it twice (its length, its times).
        """
        if extra:
            keys, count = decode_layout([o + self.clock + 1 for o in self._key_offsets] + extra, ratio)
            return np.array([keys], dtype=np.float64), np.array([count], dtype=np.float64)
        if steps == 1:
            keys, count = self._layout_at(ratio)
            return np.array([keys], dtype=np.float64), np.array([count], dtype=np.float64)
        cached = self._run_keys
        if cached is not None and cached[0] == (self.clock, ratio) and len(cached[1]) >= steps:
            return cached[1][:steps], cached[2][:steps]
        if self._key_array is None:
            self._key_array = np.array(self._key_offsets, dtype=np.float64)
        offsets = self._key_array
        shift = self.clock + 1 + np.arange(steps, dtype=np.float64)  # a member's keys are offset + shift
        padded, groups = np.zeros(steps), np.zeros(steps)
        top = np.full(steps, len(offsets) - 1)  # each tick's longest member not yet in a group
        while len(offsets):
            live = top >= 0
            if not live.any():
                break
            longest = offsets[np.maximum(top, 0)] + shift
            # a row joins the group while its keys are >= ratio x the group's longest (decode_groups' rule)
            first = np.searchsorted(offsets, ratio * longest - shift, side="left")
            padded += np.where(live, (top - first + 1) * longest, 0.0)
            groups += live
            top = np.where(live, first - 1, -1)
        self._run_keys = ((self.clock, ratio), padded, groups)
        return padded, groups

    def _layout_at(self, ratio: float) -> tuple[int, int]:
        """The current tick's padded keys and group count, one bisection per group."""
        offsets, shift = self._key_offsets, self.clock + 1
        top, padded, groups = len(offsets) - 1, 0, 0
        while top >= 0:
            longest = offsets[top] + shift
            first = bisect.bisect_left(offsets, ratio * longest - shift, 0, top)
            padded += (top - first + 1) * longest
            groups += 1
            top = first - 1
        return padded, groups

    def pop_block_needs(self, tick: int) -> list[Request]:
        """Members needing a new block at `tick`; give each its block, then `push_block_needs`."""
        entries = self._blocks.pop(tick, None)
        if not entries:
            return []
        return [m.req for m in entries if m.active]

    def push_block_needs(self, reqs: list[Request]) -> None:
        """Track the next block need of these requests (those still members)."""
        blocks, members, bs = self._blocks, self.members, self.block_size
        for req in reqs:
            m = members.get(req)
            if m is not None:  # the tick whose token overflows the blocks it holds
                blocks.setdefault(m.clock0 + len(req.block_ids) * bs - m.computed0, []).append(m)

    def next_finish(self) -> int | None:
        entry = self._valid_top()
        return None if entry is None else entry[0]

    def advance(self, steps: int) -> list[Request]:
        """Run `steps` ticks; returns the members that reached max_tokens (synced, removed)."""
        self.clock += steps
        self.context += len(self.members) * steps
        done = []
        while True:
            entry = self._valid_top()
            if entry is None or entry[0] > self.clock:
                return done
            heapq.heappop(self._finish)
            req = entry[2].req
            self.leave(req)
            done.append(req)

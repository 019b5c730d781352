"""Requests in steady decode whose per-step progress is implicit (synthetic tokens only).

In a simulation every decoding request advances exactly one token per step
and its token values do not matter, so per-request work is only needed at
events: when a request needs its next KV block and when it reaches
max_tokens. The cohort keeps a tick `clock` (decode steps run) and, per
member, the clock and computed-token count at which it joined; `sync`
materialises a member's state (computed tokens, synthetic outputs) on demand.
This turns a step's cost from O(running requests) into O(events).
"""

from __future__ import annotations

import heapq
import itertools

from ..request import Request

SYNTHETIC_TOKEN = 0


class DecodeCohort:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.clock = 0
        self.members: dict[Request, None] = {}
        self.context = 0  # sum of members' num_computed_tokens at the current clock
        self._finish: list[tuple[int, int, Request]] = []  # (clock at which it finishes, seq, req)
        # tick -> members needing a new block then; a need is never more than block_size ticks away,
        # so buckets beat a heap. Entries of members that left or rejoined are checked on pop.
        self._blocks: dict[int, list[Request]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.members)

    # A member computes token position computed0 + (t - clock0) at tick t and has
    # made outputs0 + (clock - clock0) outputs once the clock reads `clock`.

    def _finish_key(self, req: Request) -> int:
        outputs0 = req.decode_computed0 + 1 - len(req.prompt_token_ids)
        return req.decode_clock0 + req.sampling_params.max_tokens - outputs0

    def _block_key(self, req: Request) -> int:
        return req.decode_clock0 + len(req.block_ids) * self.block_size - req.decode_computed0

    def join(self, req: Request) -> None:
        """Add a request that just sampled a token and will decode from the next tick."""
        req.decode_clock0 = self.clock
        req.decode_computed0 = req.num_computed_tokens
        self.members[req] = None
        self.context += req.num_computed_tokens
        heapq.heappush(self._finish, (self._finish_key(req), next(self._seq), req))
        self._blocks.setdefault(self._block_key(req), []).append(req)

    def sync(self, req: Request) -> None:
        """Bring a member's num_computed_tokens and outputs up to the clock."""
        advance = self.clock - req.decode_clock0
        if advance:
            req.num_computed_tokens = req.decode_computed0 + advance
            req.output_token_ids.extend([SYNTHETIC_TOKEN] * advance)
            req.num_tokens += advance
            req.decode_clock0 = self.clock
            req.decode_computed0 = req.num_computed_tokens

    def leave(self, req: Request) -> None:
        """Remove a member (finished, preempted or aborted), its state synced; its heap entries go stale."""
        self.sync(req)
        del self.members[req]
        self.context -= req.num_computed_tokens
        req.decode_clock0 = None

    def _valid_top(self, heap: list, key) -> tuple[int, int, Request] | None:
        while heap:
            entry = heap[0]
            req = entry[2]
            if req.decode_clock0 is not None and key(req) == entry[0]:
                return entry
            heapq.heappop(heap)  # stale: the request left (and maybe rejoined with other keys)
        return None

    def pop_block_needs(self, tick: int) -> list[Request]:
        """Members needing a new block at `tick`; give each its block, then `push_block_needs`."""
        entries = self._blocks.pop(tick, None)
        if not entries:
            return []
        key = self._block_key
        # dict: a member that left and rejoined may have two live entries
        return list({r: None for r in entries if r.decode_clock0 is not None and key(r) == tick})

    def push_block_needs(self, reqs: list[Request]) -> None:
        """Track the next block need of these members (those still in the cohort)."""
        blocks, key = self._blocks, self._block_key
        for req in reqs:
            if req.decode_clock0 is not None:
                blocks.setdefault(key(req), []).append(req)

    def next_finish(self) -> int | None:
        entry = self._valid_top(self._finish, self._finish_key)
        return None if entry is None else entry[0]

    def advance(self, steps: int) -> list[Request]:
        """Run `steps` ticks; returns the members that reached max_tokens (synced, removed)."""
        self.clock += steps
        self.context += len(self.members) * steps
        done = []
        while True:
            entry = self._valid_top(self._finish, self._finish_key)
            if entry is None or entry[0] > self.clock:
                return done
            heapq.heappop(self._finish)
            req = entry[2]
            self.leave(req)
            done.append(req)

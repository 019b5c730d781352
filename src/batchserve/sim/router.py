"""Routers: which replica gets an arriving request.

- `round-robin`: in turn.
- `least-loaded`: fewest outstanding tokens (prompt + output budget not yet computed).
- `prefix-affinity`: the replica whose recent requests share the longest prefix
  with this one (its cache likely holds it), unless that replica is overloaded
  relative to the least-loaded one, as SGLang's cache-aware router does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ..engine import Engine
from ..request import Request

ROUTERS = ("round-robin", "least-loaded", "prefix-affinity")


class Router:
    def __init__(self, replicas: Sequence[Engine]) -> None:
        self.replicas = replicas

    def route(self, req: Request) -> int:
        raise NotImplementedError


class RoundRobinRouter(Router):
    def __init__(self, replicas: Sequence[Engine]) -> None:
        super().__init__(replicas)
        self._next = 0

    def route(self, req: Request) -> int:
        idx = self._next
        self._next = (idx + 1) % len(self.replicas)
        return idx


class LeastLoadedRouter(Router):
    def route(self, req: Request) -> int:
        loads = [e.outstanding_tokens for e in self.replicas]
        return loads.index(min(loads))


class PrefixAffinityRouter(Router):
    """Route to the longest prefix match among replicas, falling back to least-loaded.

    Each replica's view is an LRU set of the block hashes of requests routed to
    it, bounded by its KV cache size: an approximation of what it has cached.
    """

    def __init__(self, replicas: Sequence[Engine], balance_ratio: float = 1.5, min_match_blocks: int = 1) -> None:
        super().__init__(replicas)
        self.balance_ratio = balance_ratio
        self.min_match_blocks = min_match_blocks
        self._seen: list[OrderedDict[int, None]] = [OrderedDict() for _ in replicas]
        self._capacity = [e.scheduler.kv.num_blocks for e in replicas]

    def route(self, req: Request) -> int:
        kv = self.replicas[0].scheduler.kv
        hashes = kv.hash_blocks(req, req.num_prompt_tokens // kv.block_size)
        loads = [e.outstanding_tokens for e in self.replicas]
        least = loads.index(min(loads))
        best, best_len = least, 0
        for idx, seen in enumerate(self._seen):
            n = 0
            for h in hashes:
                if h not in seen:
                    break
                n += 1
            if n > best_len:
                best, best_len = idx, n
        if best_len < self.min_match_blocks or loads[best] > self.balance_ratio * loads[least] + kv.block_size * 64:
            best = least
        seen, cap = self._seen[best], self._capacity[best]
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > cap:
            seen.popitem(last=False)
        return best


def make_router(name: str, replicas: Sequence[Engine]) -> Router:
    classes = {"round-robin": RoundRobinRouter, "least-loaded": LeastLoadedRouter, "prefix-affinity": PrefixAffinityRouter}
    if name not in classes:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    return classes[name](replicas)

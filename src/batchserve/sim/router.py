"""Routers: which replica gets an arriving request.

- `round-robin`: in turn.
- `least-loaded`: fewest outstanding tokens (prompt + output budget not yet computed).
- `prefix-affinity`: the replica whose recent requests share the longest prefix
  with this one (its cache likely holds it), unless that replica is overloaded
  relative to the least-loaded one, as SGLang's cache-aware router does.

`PrefixAffinity` is that decision on its own, over prefix keys and loads, so
sharded batch jobs (`jobs/routing.py`) route by the same rule and knobs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RouterConfig:
    """How prefix affinity trades prefix-cache hits against balance."""

    balance_ratio: float = 1.5
    """Affinity yields to the least-loaded replica once the matched one carries more than this many times its
    outstanding tokens (plus the slack below), so one large prefix group cannot pin a whole load to one replica."""
    balance_slack_tokens: int = 4096
    """Outstanding tokens added to that bound: on a lightly loaded cluster affinity always holds."""

    def __post_init__(self) -> None:
        if self.balance_ratio < 1 or self.balance_slack_tokens < 0:
            raise ValueError(f"router config needs balance_ratio >= 1 and balance_slack_tokens >= 0, got {self}")


class PrefixAffinity:
    """Each replica's view is an LRU set of the prefix keys routed to it, bounded by `capacities`: an
    approximation of what it has cached. A request goes to the replica holding its longest run of leading
    keys, else (or when that replica is overloaded) to the least-loaded one."""

    def __init__(self, capacities: Sequence[int], config: RouterConfig = RouterConfig()) -> None:
        self.config = config
        self._seen: list[OrderedDict[Hashable, None]] = [OrderedDict() for _ in capacities]
        self._capacity = list(capacities)

    def route(self, keys: Sequence[Hashable], loads: Sequence[int]) -> int:
        """The replica for a request whose prefix is `keys` (outer to inner), given each replica's load."""
        least = loads.index(min(loads))
        best, best_len = least, 0
        for idx, seen in enumerate(self._seen):
            n = 0
            for key in keys:
                if key not in seen:
                    break
                n += 1
            if n > best_len:
                best, best_len = idx, n
        c = self.config
        if best_len == 0 or loads[best] > c.balance_ratio * loads[least] + c.balance_slack_tokens:
            best = least
        seen, cap = self._seen[best], self._capacity[best]
        for key in keys:
            seen[key] = None
            seen.move_to_end(key)
        while len(seen) > cap:
            seen.popitem(last=False)
        return best


class PrefixAffinityRouter(Router):
    """Prefix affinity over the requests' block hashes, with loads from the replicas' outstanding tokens."""

    def __init__(self, replicas: Sequence[Engine], config: RouterConfig = RouterConfig()) -> None:
        super().__init__(replicas)
        self.affinity = PrefixAffinity([e.scheduler.kv.num_blocks for e in replicas], config)

    def route(self, req: Request) -> int:
        kv = self.replicas[0].scheduler.kv
        hashes = kv.hash_blocks(req, req.num_prompt_tokens // kv.block_size)
        return self.affinity.route(hashes, [e.outstanding_tokens for e in self.replicas])


def make_router(name: str, replicas: Sequence[Engine], config: RouterConfig = RouterConfig()) -> Router:
    """`config` tunes prefix affinity; the other routers have no knobs."""
    if name == "prefix-affinity":
        return PrefixAffinityRouter(replicas, config)
    classes = {"round-robin": RoundRobinRouter, "least-loaded": LeastLoadedRouter}
    if name not in classes:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    return classes[name](replicas)

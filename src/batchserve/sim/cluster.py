"""A simulated cluster: replicas, a router, and one event queue in simulated time."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..metrics import RequestRecord
from ..request import Request
from .engine import SimEngine
from .router import RouterConfig, make_router


@dataclass
class SimResult:
    records: list[RequestRecord]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (request id, why)
    num_steps: int = 0
    num_iterations: int = 0  # engine.step() calls: steps minus the fast-forwarded ones
    simulated_s: float = 0.0
    wall_s: float = 0.0
    spec_draft_tokens: int = 0
    """Speculative decoding: draft tokens verified, and of them accepted (0 with speculation off)."""
    spec_accepted_tokens: int = 0


class Cluster:
    """Replicas that share nothing but the router; events are arrivals and replica steps.

    A replica's step is processed at its start time as a whole (schedule,
    predict, update) and the replica's clock jumps to its end. Arrivals at or
    before a step's start join that step; a replica fast-forwards decode steps
    only up to the next arrival, since the router may send it there.
    """

    def __init__(self, replicas: Sequence[SimEngine], router: str = "round-robin",
                 router_config: RouterConfig = RouterConfig()) -> None:
        if not replicas:
            raise ValueError("a cluster needs at least one replica")
        self.replicas = list(replicas)
        self.router = make_router(router, self.replicas, router_config)

    def run(
        self,
        requests: Iterable[Request],
        progress: Callable[[int, float], None] | None = None,
        progress_every: int = 256,
    ) -> SimResult:
        t0 = time.perf_counter()
        replicas = self.replicas
        records: list[RequestRecord] = []
        rejected: list[tuple[str, str]] = []
        busy: list[tuple[float, int]] = []  # (replica clock, replica index) of replicas with work
        is_busy = [False] * len(replicas)
        arrivals = iter(requests)
        nxt = next(arrivals, None)
        inf = float("inf")
        last_arrival = -inf
        while nxt is not None or busy:
            t_arrival = nxt.arrival_time if nxt is not None else inf
            if busy and busy[0][0] < t_arrival:
                _, idx = heapq.heappop(busy)
                engine = replicas[idx]
                for req in engine.step(until=t_arrival).finished:
                    records.append(RequestRecord.from_request(req, idx))
                    if progress is not None and len(records) % progress_every == 0:
                        progress(len(records), engine.now)
                if engine.has_unfinished():
                    heapq.heappush(busy, (engine.now, idx))
                else:
                    is_busy[idx] = False
                continue
            if t_arrival < last_arrival:
                raise ValueError(f"request {nxt.request_id} arrives at {t_arrival} before the previous one")
            last_arrival = t_arrival
            idx = self.router.route(nxt)
            engine = replicas[idx]
            try:
                engine.add_request(nxt)
            except ValueError as err:
                rejected.append((nxt.request_id, str(err)))
            else:
                if not is_busy[idx]:
                    engine.wake(t_arrival)
                    heapq.heappush(busy, (engine.now, idx))
                    is_busy[idx] = True
            nxt = next(arrivals, None)
        if progress is not None:
            progress(len(records), max(e.now for e in replicas))
        return SimResult(
            records=records,
            rejected=rejected,
            num_steps=sum(e.num_steps for e in replicas),
            num_iterations=sum(e.num_iterations for e in replicas),
            simulated_s=max(e.now for e in replicas),
            wall_s=time.perf_counter() - t0,
            spec_draft_tokens=sum(e.scheduler.speculator.num_draft_tokens for e in replicas if e.scheduler.speculator),
            spec_accepted_tokens=sum(e.scheduler.speculator.num_accepted_tokens for e in replicas
                                     if e.scheduler.speculator),
        )

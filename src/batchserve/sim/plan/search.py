"""The planner's driver: prune, bound, search capacities, size replica counts, verify whole clusters.

1. Prune: replica configs that do not fit in memory or the GPU budget (no simulation).
2. Bound: each config's steady offline throughput T (one simulation) caps its
   capacity, so ceil(rate / T) replicas is a lower bound on its cost (max-rate:
   floor(budget / gpus) x T an upper bound on its rate).
3. Capacity: bisection on the arrival rate for one replica, in order of the
   bound; a config whose bound cannot beat the k-th best found so far is skipped.
4. Size: replicas = ceil(rate / capacity). One replica at rate / r with Poisson
   arrivals is a pessimistic stand-in for r replicas: round-robin hands each
   replica every r-th arrival (Erlang gaps, smoother than Poisson) and
   least-loaded balances better still, so the count never falls short.
5. Verify: the cheapest candidates are simulated as whole clusters (every
   router in the space, first that passes) at the target rate; one that fails
   gets another replica. Reported metrics and margins come from these runs.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from ..hardware import get_hardware
from .evaluate import Capacity, Probe, Workload, capacity_search, offline_throughput, run_probe
from .runner import Call, Dispatcher
from .slo import LatencySLO, min_margin
from .space import Base, Pruned, ReplicaConfig, SearchSpace, enumerate_space

FRAGILE_MARGIN = 0.10


@dataclass(frozen=True)
class PlanRequest:
    space: SearchSpace
    base: Base
    workload: Workload
    slo: LatencySLO
    prices: dict[str, float]
    """Dollars per GPU-hour, by hardware catalog name."""
    rate: float | None = None
    """Target arrival rate (req/s) for min-cost; unused for max-rate."""
    objective: str = "min-cost"
    runner_ups: int = 3
    frontier: int = 8
    """Candidates verified as whole clusters (min-cost): the runner-ups and the Pareto frontier come from them."""
    rel_tol: float = 0.05
    """Capacity precision, as a fraction of the offline throughput."""
    offline_sample: int = 400
    """Requests in the offline run that bounds capacity: enough for a steady batch, and it runs for every config."""

    def __post_init__(self) -> None:
        if self.objective not in ("min-cost", "max-rate"):
            raise ValueError(f"unknown objective {self.objective!r}; choose min-cost or max-rate")
        if self.objective == "min-cost" and not (self.rate and self.rate > 0):
            raise ValueError("--objective min-cost needs a target --rate > 0 (requests/s)")
        missing = [h for h in self.space.hardware if get_hardware(h).name not in self.prices]
        if missing:
            raise ValueError(f"no price for {', '.join(missing)}; give --price {missing[0]}=DOLLARS_PER_GPU_HOUR,...")


@dataclass
class Candidate:
    """A replica config times a replica count behind a router, with its cost and (once verified) its metrics."""

    config: ReplicaConfig
    capacity: Capacity
    replicas: int
    price: float
    router: str = "round-robin"
    rate: float = 0.0
    """The rate it is judged at: the target (min-cost) or its capacity (max-rate)."""
    probe: Probe | None = None
    """The whole-cluster simulation at `rate`, once verified."""
    why: str = ""

    @property
    def num_gpus(self) -> int:
        return self.replicas * self.config.gpus

    @property
    def cost_per_hour(self) -> float:
        return self.num_gpus * self.price

    @property
    def est_capacity(self) -> float:
        """Rate within SLO of the whole candidate, from one replica's capacity (see step 4)."""
        return self.replicas * self.capacity.capacity

    @property
    def margin(self) -> float | None:
        return min_margin(self.probe.checks) if self.probe and self.probe.checks else None

    @property
    def fragile(self) -> bool:
        return self.margin is not None and self.margin < FRAGILE_MARGIN

    def cost_per_million_output_tokens(self) -> float | None:
        s = self.probe.summary if self.probe else None
        if not s or not s["total_output_tokens"]:
            return None
        tokens_per_hour = self.rate * s["total_output_tokens"] / s["num_requests"] * 3600
        return self.cost_per_hour / tokens_per_hour * 1e6


@dataclass
class Verification:
    probes: list[Probe]
    router: str

    @property
    def num_sims(self) -> int:
        return len(self.probes)

    @property
    def passed(self) -> bool:
        return self.probes[-1].passed


def verify(base: Base, c: ReplicaConfig, workload: Workload, slo: LatencySLO, rate: float, replicas: int,
           routers: tuple[str, ...]) -> Verification:
    """Simulate the whole cluster at `rate` with each router in turn; stop at the first that meets the SLO."""
    probes = []
    for router in routers if replicas > 1 else routers[:1]:
        probes.append(run_probe(base, c, workload, slo, rate, replicas, router, early_stop=False))
        if probes[-1].passed:
            break
    return Verification(probes, router)


@dataclass
class PlanResult:
    request: PlanRequest
    accepted: list[Candidate]
    """Candidates that meet every target, best first (the first is the plan)."""
    rejected: list[Candidate]
    """Evaluated candidates that cannot meet the targets within the budget, closest first."""
    pruned: list[Pruned]
    skipped: list[ReplicaConfig]
    """Not evaluated: their bound could not beat the accepted candidates."""
    capacities: list[Capacity]
    counts: dict[str, int] = field(default_factory=dict)
    closest: Candidate | None = None
    """When nothing is accepted: the candidate that comes nearest, simulated at the target."""

    @property
    def best(self) -> Candidate | None:
        return self.accepted[0] if self.accepted else None


def plan(req: PlanRequest, dispatcher: Dispatcher) -> PlanResult:
    feasible, pruned = enumerate_space(req.space, req.base)
    if not feasible:
        raise ValueError(f"nothing fits: every configuration was pruned, e.g. {pruned[0].config.label()}: "
                         f"{pruned[0].reason}")
    prices = {c: req.prices[c.hardware] for c in feasible}
    calls = [Call(offline_throughput, (req.base, c, req.workload, req.offline_sample)) for c in feasible]
    throughput = {feasible[i]: t for i, t in dispatcher.map("throughput", calls).items()}
    search = _MinCost(req, prices) if req.objective == "min-cost" else _MaxRate(req, prices)
    order = sorted(feasible, key=lambda c: search.bound_key(c, throughput[c]))
    calls = [Call(capacity_search, (req.base, c, req.workload, req.slo, throughput[c], req.rel_tol)) for c in order]
    done = dispatcher.map(
        "capacity", calls,
        skip=lambda i: search.cannot_beat(order[i], throughput[order[i]]),
        on_result=lambda i, cap: search.add(cap),
    )
    capacities = [done[i] for i in sorted(done)]
    skipped = [order[i] for i in range(len(order)) if i not in done]
    accepted, rejected = search.verify(dispatcher)
    result = PlanResult(req, accepted, rejected, pruned, skipped, capacities, dispatcher.counts)
    if not accepted and rejected:
        result.closest = search.closest(dispatcher, rejected[0])
    return result


class _MinCost:
    """Cheapest candidate meeting the SLO at the target rate; the k-th best cost so far bounds the search."""

    def __init__(self, req: PlanRequest, prices: dict[ReplicaConfig, float]) -> None:
        self.req, self.prices = req, prices
        self.k = 1 + req.runner_ups
        self.costs: list[float] = []  # estimated costs of candidates within budget, ascending
        self.candidates: list[Candidate] = []
        self.rejected: list[Candidate] = []

    def _cost(self, c: ReplicaConfig, replicas: int) -> float:
        return replicas * c.gpus * self.prices[c]

    def bound_key(self, c: ReplicaConfig, throughput: float) -> tuple:
        if throughput <= 0:
            return (math.inf, c)
        return (self._cost(c, math.ceil(self.req.rate / throughput)), c)

    def cannot_beat(self, c: ReplicaConfig, throughput: float) -> bool:
        kth = self.costs[self.k - 1] if len(self.costs) >= self.k else math.inf
        return throughput > 0 and self.bound_key(c, throughput)[0] > kth

    def add(self, cap: Capacity) -> None:
        c, budget = cap.config, self.req.space.max_gpus
        most = budget // c.gpus
        if cap.capacity <= 0:
            self.rejected.append(Candidate(c, cap, most, self.prices[c], rate=self.req.rate, why=cap.why))
            return
        need = math.ceil(self.req.rate / cap.capacity)
        cand = Candidate(c, cap, need, self.prices[c], rate=self.req.rate)
        if cand.num_gpus > budget:
            cand.replicas = most
            cand.why = (f"one replica sustains {cap.capacity:.3g} req/s within the SLO, so {self.req.rate:g} req/s "
                        f"needs {need} replicas = {need * c.gpus} GPUs > --max-gpus {budget} "
                        f"({most} replicas sustain {most * cap.capacity:.3g} req/s)")
            self.rejected.append(cand)
            return
        self.candidates.append(cand)
        bisect.insort(self.costs, cand.cost_per_hour)

    def verify(self, dispatcher: Dispatcher) -> tuple[list[Candidate], list[Candidate]]:
        """Verify the cheapest candidates as clusters, a batch at a time; a failing one retries with a replica more."""
        req, budget = self.req, self.req.space.max_gpus
        queue = sorted(self.candidates, key=lambda x: (x.cost_per_hour, -x.est_capacity, x.config))
        want = max(self.k, req.frontier)
        accepted: list[Candidate] = []
        while queue and len(accepted) < want:
            batch, queue = queue[: max(1, dispatcher.runner.slots)], queue[max(1, dispatcher.runner.slots):]
            calls = [Call(verify, (req.base, x.config, req.workload, req.slo, req.rate, x.replicas, req.space.routers))
                     for x in batch]
            for i, v in sorted(dispatcher.map("verify", calls).items()):
                cand = batch[i]
                cand.probe, cand.router = v.probes[-1], v.router
                if v.passed:
                    accepted.append(cand)
                elif (cand.replicas + 1) * cand.config.gpus <= budget:
                    queue.append(Candidate(cand.config, cand.capacity, cand.replicas + 1, cand.price, rate=req.rate))
                else:
                    cand.why = f"the whole cluster misses the SLO at {req.rate:g} req/s: {v.probes[-1].why}"
                    self.rejected.append(cand)
            queue.sort(key=lambda x: (x.cost_per_hour, -x.est_capacity, x.config))
        accepted.sort(key=lambda x: (x.cost_per_hour, -(x.margin or 0), x.config))
        return accepted, sorted(self.rejected, key=self._closeness)

    def _closeness(self, x: Candidate) -> tuple:
        """Nearest first: the larger share of the target rate its budget sustains, then the smaller SLO miss."""
        share = x.est_capacity / self.req.rate
        light = x.capacity.probes[0].checks if x.capacity.probes and x.capacity.probes[0].checks else None
        return (-share, -(min_margin(light) if light else -math.inf), x.cost_per_hour, x.config)

    def closest(self, dispatcher: Dispatcher, cand: Candidate) -> Candidate:
        """Simulate the nearest rejected candidate at the target with all the replicas the budget allows."""
        replicas = max(1, cand.replicas)
        call = Call(verify, (self.req.base, cand.config, self.req.workload, self.req.slo, self.req.rate, replicas,
                             self.req.space.routers))
        (v,) = dispatcher.map("closest", [call]).values()
        return Candidate(cand.config, cand.capacity, replicas, cand.price, v.router, self.req.rate, v.probes[-1],
                         cand.why)


class _MaxRate:
    """Highest rate the GPU budget sustains within the SLO; the k-th best rate so far bounds the search."""

    def __init__(self, req: PlanRequest, prices: dict[ReplicaConfig, float]) -> None:
        self.req, self.prices = req, prices
        self.k = 1 + req.runner_ups
        self.rates: list[float] = []  # estimated capacities, descending
        self.candidates: list[Candidate] = []
        self.rejected: list[Candidate] = []

    def _replicas(self, c: ReplicaConfig) -> int:
        return self.req.space.max_gpus // c.gpus

    def bound_key(self, c: ReplicaConfig, throughput: float) -> tuple:
        return (-self._replicas(c) * throughput, c)

    def cannot_beat(self, c: ReplicaConfig, throughput: float) -> bool:
        kth = self.rates[self.k - 1] if len(self.rates) >= self.k else 0.0
        return self._replicas(c) * throughput < kth

    def add(self, cap: Capacity) -> None:
        cand = Candidate(cap.config, cap, self._replicas(cap.config), self.prices[cap.config])
        cand.rate = cand.est_capacity
        if cap.capacity <= 0:
            cand.why = cap.why
            self.rejected.append(cand)
            return
        self.candidates.append(cand)
        self.rates = sorted([*self.rates, cand.rate], reverse=True)

    def verify(self, dispatcher: Dispatcher) -> tuple[list[Candidate], list[Candidate]]:
        req = self.req
        top = sorted(self.candidates, key=lambda x: (-x.rate, x.cost_per_hour, x.config))[: max(self.k, req.frontier)]
        calls = [Call(verify, (req.base, x.config, req.workload, req.slo, x.rate, x.replicas, req.space.routers))
                 for x in top]
        accepted = []
        for i, v in sorted(dispatcher.map("verify", calls).items()):
            cand = top[i]
            cand.probe, cand.router = v.probes[-1], v.router
            if v.passed:
                accepted.append(cand)
            else:
                cand.why = f"the whole cluster misses the SLO at its estimated {cand.rate:.3g} req/s: {v.probes[-1].why}"
                self.rejected.append(cand)
        self.rejected.sort(key=lambda x: (-x.est_capacity, x.config))
        return accepted, self.rejected

    def closest(self, dispatcher: Dispatcher, cand: Candidate) -> Candidate:
        return cand

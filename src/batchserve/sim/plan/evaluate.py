"""What a search worker runs: a simulation at one rate (a probe) and a capacity search by bisection.

Everything here is a plain function of picklable dataclasses, so the same
calls run inline, in a process pool or as Ray tasks, and their results can be
cached on disk by a hash of their inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from ...metrics import steady_throughput, summarize
from ...request import Request
from ...workload import WorkloadSpec, synthetic_requests, trace_requests
from ..simulate import simulate
from .slo import ClearViolation, LatencySLO, ViolationWatch, min_margin, worst
from .space import Base, ReplicaConfig


@dataclass(frozen=True)
class Workload:
    """A synthetic spec or a trace, replayable at any mean arrival rate."""

    spec: WorkloadSpec
    trace: str | None = None
    trace_rate: float | None = None
    """Mean arrival rate of the trace as recorded; arrivals are rescaled from it."""
    num_requests: int = 0

    @classmethod
    def from_trace(cls, path: str, spec: WorkloadSpec) -> Workload:
        arrivals = [r.arrival_time for r in trace_requests(path, vocab_size=spec.vocab_size, seed=spec.seed)]
        span = arrivals[-1] - arrivals[0]
        if len(arrivals) < 2 or span <= 0:
            raise ValueError(f"trace {path}: planning needs timed arrivals (at least two distinct arrival times)")
        return cls(spec, path, (len(arrivals) - 1) / span, len(arrivals))

    @classmethod
    def synthetic(cls, spec: WorkloadSpec) -> Workload:
        if spec.arrival == "offline":
            raise ValueError("planning needs timed arrivals: use --arrival poisson or gamma, not offline")
        return cls(spec, num_requests=spec.num_requests)

    def requests(self, rate: float | None) -> Iterator[Request]:
        """Requests arriving at `rate` per second on average; None puts them all at t=0 (offline)."""
        if self.trace is None:
            return synthetic_requests(replace(self.spec, rate=rate))
        return self._scaled_trace(rate)

    def _scaled_trace(self, rate: float | None) -> Iterator[Request]:
        first = None
        for req in trace_requests(self.trace, vocab_size=self.spec.vocab_size, seed=self.spec.seed):
            first = req.arrival_time if first is None else first
            req.arrival_time = 0.0 if rate is None else (req.arrival_time - first) * self.trace_rate / rate
            yield req


@dataclass
class Probe:
    """One simulation at one rate: whether every target held, and by how much."""

    rate: float
    passed: bool
    checks: dict[str, dict[str, float]] | None = None
    """Per target: value_s, target_s, margin; None when stopped early or nothing could be measured."""
    summary: dict | None = None
    why: str = ""
    """Why it failed, in words; empty when it passed."""


def run_probe(
    base: Base, config: ReplicaConfig, workload: Workload, slo: LatencySLO, rate: float,
    replicas: int = 1, router: str = "round-robin", early_stop: bool = True,
) -> Probe:
    """Simulate `replicas` replicas behind `router` at `rate`; stop as soon as a target is certainly missed."""
    setup = base.setup(config, replicas, router)
    requests = workload.requests(rate)
    if early_stop:
        requests = ViolationWatch(slo, workload.num_requests).watch(requests)
    try:
        result = simulate(setup, requests)
    except ClearViolation as stop:
        return Probe(rate, False, why=f"{stop} certainly missed (simulation stopped early)")
    if result.rejected:
        return Probe(rate, False, why=f"{len(result.rejected)} requests rejected: {result.rejected[0][1]}")
    summary = summarize(result.records)
    checks = slo.check(summary)
    passed = min_margin(checks) >= 0
    return Probe(rate, passed, checks, summary, "" if passed else worst(checks))


@dataclass
class Capacity:
    """A replica config's highest rate within the SLO (0 when none), and the probes that found it."""

    config: ReplicaConfig
    throughput: float
    """Steady offline throughput (req/s): the ceiling no arrival rate can beat."""
    capacity: float = 0.0
    probes: list[Probe] = field(default_factory=list)
    why: str = ""
    """Why the capacity is 0, when it is."""

    @property
    def num_sims(self) -> int:
        return len(self.probes)


def offline_throughput(base: Base, config: ReplicaConfig, workload: Workload, sample: int) -> float:
    """Steady throughput with the first `sample` requests queued at t=0 (0 when some request can never run).

    It orders the search and caps the bisection; were it ever below the true capacity, the capacity found
    would only be lower (conservative), never higher.
    """
    result = simulate(base.setup(config), itertools.islice(workload.requests(None), sample))
    return 0.0 if result.rejected or not result.records else steady_throughput(result.records)


def capacity_search(
    base: Base, config: ReplicaConfig, workload: Workload, slo: LatencySLO, throughput: float, rel_tol: float = 0.05,
) -> Capacity:
    """Bisect the arrival rate between light load and the offline throughput.

    The first probe runs at `rel_tol` of the throughput, to the end (no early
    stop) so a config that misses even unloaded says by how much; after that,
    failing probes stop as soon as a target is certainly missed, which is
    what keeps overloaded probes cheap. The answer is within rel_tol x
    throughput below the true capacity of this workload sample.
    """
    cap = Capacity(config, throughput)
    if throughput <= 0:
        cap.why = "some request can never run (longer than the KV cache or the token budget)"
        return cap
    lo, hi = rel_tol * throughput, throughput
    light = run_probe(base, config, workload, slo, lo, early_stop=False)
    cap.probes.append(light)
    if not light.passed:
        cap.why = f"misses the SLO even at light load ({lo:.3g} req/s): {light.why}"
        return cap
    while hi - lo > rel_tol * throughput:
        mid = (lo + hi) / 2
        probe = run_probe(base, config, workload, slo, mid)
        cap.probes.append(probe)
        lo, hi = (mid, hi) if probe.passed else (lo, mid)
    cap.capacity = lo
    return cap

"""Percentile latency targets (`ttft_p90=2s,tpot_p90=100ms`), their margins, and early stop.

The goodput SLO in `metrics` is per request; a deployment target is a
statistic over all requests (p50/p90/p99/mean of TTFT, TPOT or E2E), which is
what a capacity search bisects on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...metrics import parse_targets
from ...request import Request

METRICS = ("ttft", "tpot", "e2e")
STATS = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "mean": None}
_FORM = (
    "comma-separated METRIC_STAT=VALUE with METRIC in ttft, tpot, e2e, STAT in p50, p90, p99, mean "
    "and values like 2s or 100ms, e.g. 'ttft_p90=2s,tpot_p90=100ms'"
)


@dataclass(frozen=True)
class Target:
    metric: str
    """ttft, tpot or e2e."""
    stat: str
    """p50, p90, p99 or mean."""
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.stat}"

    def value(self, summary: dict[str, Any]) -> float:
        """The statistic in a `summarize()` dict; inf when no request defines it (nothing finished)."""
        v = summary[f"{self.metric}_s"][self.stat]
        return math.inf if v is None else v

    def margin(self, value: float) -> float:
        """Headroom as a fraction of the target: 0.25 = 25% under it, negative = over it."""
        return (self.seconds - value) / self.seconds


@dataclass(frozen=True)
class LatencySLO:
    targets: tuple[Target, ...]

    @classmethod
    def parse(cls, spec: str) -> LatencySLO:
        keys = [f"{m}_{s}" for m in METRICS for s in STATS]
        parsed = parse_targets(spec, keys, _FORM)
        return cls(tuple(Target(*key.split("_"), seconds) for key, seconds in parsed.items()))

    def __str__(self) -> str:
        return ",".join(f"{t.name}={_fmt(t.seconds)}" for t in self.targets)

    def check(self, summary: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Per target: predicted value, target and margin, all in seconds/fractions (JSON-able)."""
        out = {}
        for t in self.targets:
            value = t.value(summary)
            out[t.name] = {"value_s": value, "target_s": t.seconds, "margin": t.margin(value)}
        return out

    def to_dict(self) -> dict[str, float]:
        return {t.name: t.seconds for t in self.targets}


def min_margin(checks: dict[str, dict[str, float]]) -> float:
    return min(c["margin"] for c in checks.values())


def worst(checks: dict[str, dict[str, float]]) -> str:
    """The target missed (or closest to missed) by the most, as 'ttft_p90 3.1s > 2s (+55%)'."""
    name, c = min(checks.items(), key=lambda kv: kv[1]["margin"])
    op = ">" if c["margin"] < 0 else "<="
    return f"{name} {_fmt(c['value_s'])} {op} {_fmt(c['target_s'])} ({-c['margin']:+.0%} of target)"


def _fmt(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    return f"{s * 1e3:.3g}ms" if s < 1 else f"{s:.3g}s"


class ClearViolation(Exception):
    """Raised mid-simulation once some target is certain to be missed, whatever happens next."""


class ViolationWatch:
    """Wraps the arrival stream and stops a simulation as soon as a target is certainly missed.

    The cluster pulls arrival j+1 only after processing every step that started
    before arrival j, so a request without a first token by then has TTFT (and
    E2E) of at least `now - arrival`: a lower bound. A percentile p over n values
    (numpy's linear interpolation) exceeds the target once at least
    n - floor(p (n - 1)) values do; a mean exceeds it once the lower bounds sum
    past n * target. Using the workload's size for n is conservative: records
    can only be fewer (rejected requests), and the threshold grows with n.
    """

    def __init__(self, slo: LatencySLO, num_requests: int, check_every: int = 32) -> None:
        self.slo = slo
        self.n = num_requests
        self.check_every = check_every
        self.seen: list[Request] = []

    def watch(self, requests: Sequence[Request] | Any):
        now = 0.0
        for i, req in enumerate(requests):
            if i and i % self.check_every == 0:
                self._check(now)
            now = req.arrival_time
            self.seen.append(req)
            yield req

    def _check(self, now: float) -> None:
        for t in self.slo.targets:
            bounds = [_lower_bound(r, t.metric, now) for r in self.seen]
            if STATS[t.stat] is None:
                if sum(bounds) > self.n * t.seconds:
                    raise ClearViolation(t.name)
            elif sum(b > t.seconds for b in bounds) >= self.n - math.floor(STATS[t.stat] * (self.n - 1)):
                raise ClearViolation(t.name)


def _lower_bound(req: Request, metric: str, now: float) -> float:
    """What the metric will at least be for this request, given the simulation reached `now`."""
    if metric == "tpot":
        if req.finish_time is None or req.num_output_tokens <= 1:
            return 0.0
        return (req.finish_time - req.first_token_time) / (req.num_output_tokens - 1)
    end = req.first_token_time if metric == "ttft" else req.finish_time
    return (end if end is not None else max(now, req.arrival_time)) - req.arrival_time

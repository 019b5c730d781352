"""What a report holds, independent of how it is drawn: headline figures, runs' request records, comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..metrics import RequestRecord


@dataclass(frozen=True)
class Headline:
    """One headline figure; `key` is its dotted path in the command's `--json` output, so the two always agree."""

    key: str
    label: str
    value: float | int | str | None

    @classmethod
    def pick(cls, data: dict[str, Any], wanted: Sequence[tuple[str, str]]) -> list[Headline]:
        """The figures at `wanted`'s dotted keys of `data` (absent or null keys are left out)."""
        out = []
        for key, label in wanted:
            value: Any = data
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out.append(cls(key, label, value))
        return out


@dataclass(frozen=True)
class Frontier:
    """A plan's candidates on cost per hour vs the SLO's latency metric, and the Pareto-optimal ones."""

    metric: str
    target_s: float
    points: list[tuple[float, float, str]]
    """(cost per hour, latency in s, label) of every verified candidate."""
    pareto: list[tuple[float, float]]


@dataclass
class Report:
    """Everything one report page shows; sections without data are left out, never drawn empty."""

    title: str
    command: str
    headline: list[Headline]
    config: dict[str, Any]
    problem: str | None = None
    """Why the result is failed or partial (interrupted, infeasible): shown first, in place of empty charts."""
    notes: list[str] = field(default_factory=list)
    runs: dict[str, Sequence[RequestRecord]] = field(default_factory=dict)
    """Request records by run ("measured", "predicted", "simulated"): latency CDFs, throughput and queue."""
    versus: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    """(metric, predicted, measured) where both a prediction and a measurement exist."""
    frontier: Frontier | None = None


def summary_headline(data: dict[str, Any], at: str) -> list[Headline]:
    """The headline of a `metrics.summarize` dict found at dotted key `at` of a command's JSON."""
    wanted = [("num_requests", "Requests"), ("duration_s", "Duration (s)"),
              ("request_throughput", "Request throughput (req/s)"),
              ("output_token_throughput", "Output token throughput (tok/s)"),
              ("total_token_throughput", "Total token throughput (tok/s)"),
              ("ttft_s.p50", "TTFT p50 (s)"), ("ttft_s.p99", "TTFT p99 (s)"), ("tpot_s.p50", "TPOT p50 (s)"),
              ("tpot_s.p99", "TPOT p99 (s)"), ("e2e_s.p50", "E2E p50 (s)"), ("e2e_s.p99", "E2E p99 (s)"),
              ("prefix_cache_hit_rate", "Prefix cache hit rate"), ("num_preemptions", "Preemptions"),
              ("goodput", "Goodput (req/s within SLO)")]
    return Headline.pick(data, [(f"{at}.{key}", label) for key, label in wanted])

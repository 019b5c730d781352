"""The plan as a terminal report and as a JSON document."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .search import Candidate, PlanResult
from .slo import worst

SHOWN_REJECTED = 5


def candidate_dict(c: Candidate) -> dict[str, Any]:
    """A candidate as `--json` writes it: shape, knobs, cost, predicted metrics and SLO margins."""
    s = c.probe.summary if c.probe else None
    return {
        "num_gpus": c.num_gpus,
        "hardware": c.config.hardware,
        "tp": c.config.tp,
        "pp": c.config.pp,
        "replicas": c.replicas,
        "router": c.router,
        "knobs": {
            "weight_dtype": c.config.weight_dtype,
            "scheduler_preset": c.config.preset,
            "max_num_batched_tokens": c.config.max_num_batched_tokens,
            "max_num_seqs": c.config.max_num_seqs,
        },
        "price_per_gpu_hour": c.price,
        "cost_per_hour": c.cost_per_hour,
        "cost_per_million_output_tokens": c.cost_per_million_output_tokens(),
        "rate": c.rate,
        "capacity_per_replica": c.capacity.capacity,
        "capacity": c.est_capacity,
        "offline_throughput_per_replica": c.capacity.throughput,
        "predicted": None if s is None else {
            key: s[key] for key in ("request_throughput", "output_token_throughput", "ttft_s", "tpot_s", "e2e_s",
                                    "queue_s", "num_preemptions")
        },
        "slo": c.probe.checks if c.probe else None,
        "min_margin": c.margin,
        "fragile": c.fragile,
        "why_rejected": c.why or None,
    }


def to_json(result: PlanResult) -> dict[str, Any]:
    req = result.request
    return {
        "objective": req.objective,
        "model": req.base.model,
        "rate": req.rate,
        "slo": req.slo.to_dict(),
        "max_gpus": req.space.max_gpus,
        "prices": req.prices,
        **({"speculative_config": asdict(req.base.speculative), "spec_acceptance": asdict(req.base.spec_acceptance)}
           if req.base.speculative is not None else {}),
        "best": candidate_dict(result.best) if result.best else None,
        "feasible": result.best is not None,
        "closest": candidate_dict(result.closest) if result.closest else None,
        "runner_ups": [candidate_dict(c) for c in result.accepted[1 : 1 + req.runner_ups]],
        "frontier": [candidate_dict(c) for c in pareto(result.accepted)],
        "rejected": [candidate_dict(c) for c in result.rejected],
        "pruned": [{**p.config.to_dict(), "reason": p.reason} for p in result.pruned],
        "skipped_by_bound": [c.to_dict() for c in result.skipped],
        "capacities": [{**cap.config.to_dict(), "offline_throughput": cap.throughput, "capacity": cap.capacity,
                        "num_probes": cap.num_sims, "why": cap.why or None} for cap in result.capacities],
        "search": result.counts,
    }


def latency_of(c: Candidate) -> float:
    """The frontier's latency axis: the first SLO target's predicted value."""
    return next(iter(c.probe.checks.values()))["value_s"]


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both cost and latency, cheapest first."""
    out: list[Candidate] = []
    for c in sorted((c for c in cands if c.probe and c.probe.checks), key=lambda c: (c.cost_per_hour, latency_of(c))):
        if not out or latency_of(c) < latency_of(out[-1]):
            out.append(c)
    return out


def _line(c: Candidate) -> str:
    per_m = c.cost_per_million_output_tokens()
    margin = "" if c.margin is None else f", min SLO margin {c.margin:.0%}" + (" FRAGILE" if c.fragile else "")
    return (
        f"{c.replicas} x {c.config.label()} ({c.num_gpus} GPUs, router {c.router}): ${c.cost_per_hour:.2f}/h"
        + ("" if per_m is None else f", ${per_m:.3g}/M output tokens")
        + f", capacity ~{c.est_capacity:.3g} req/s{margin}"
    )


def format_report(result: PlanResult) -> str:
    req = result.request
    goal = f"at {req.rate:g} req/s" if req.objective == "min-cost" else f"on at most {req.space.max_gpus} GPUs"
    lines = [f"plan for {req.base.model} {goal}, SLO {req.slo}"]
    best = result.best
    if best:
        lines.append("best:  " + _line(best))
        if best.probe and best.probe.checks:
            lines.append("       predicted " + ", ".join(
                f"{k} {v['value_s'] * 1e3:.0f}ms (target {v['target_s'] * 1e3:.0f}ms, margin {v['margin']:.0%})"
                for k, v in best.probe.checks.items()))
        if best.fragile:
            lines.append("       fragile: an SLO margin is under 10% at this rate; a small change in load or "
                         "lengths can break it")
        for c in result.accepted[1 : 1 + req.runner_ups]:
            lines.append("next:  " + _line(c))
    else:
        lines.append(f"no configuration meets the SLO {goal} within {req.space.max_gpus} GPUs")
        if result.closest:
            c = result.closest
            got = f"; at {c.rate:g} req/s it predicts {worst(c.probe.checks)}" if c.probe and c.probe.checks else ""
            lines.append(f"closest: {_line(c)}{got}")
            lines.append(f"         {c.why}")
    for c in result.rejected[:SHOWN_REJECTED]:
        lines.append(f"rejected: {c.config.label()}: {c.why}")
    if result.pruned:
        p = result.pruned[0]
        lines.append(f"pruned before simulating: {len(result.pruned)} configs, e.g. {p.config.label()}: {p.reason}")
    n = result.counts
    lines.append(
        f"search: {len(result.capacities)} capacity searches, {len(result.skipped)} configs skipped by the cost bound, "
        f"{n.get('simulations', 0)} simulations run, {n.get('cached', 0)} results from the cache"
    )
    return "\n".join(lines)

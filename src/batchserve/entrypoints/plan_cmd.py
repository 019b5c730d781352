"""`batchserve plan`: the cheapest deployment meeting a latency SLO at a rate (or the most rate for a budget)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import CacheConfig, SchedulerConfig
from ..progress import Progress
from ..sim.cost_model import Efficiency
from ..sim.hardware import get_hardware
from ..sim.models import get_model
from ..sim.plan.evaluate import Workload
from ..sim.plan.report import format_report, latency_of, pareto, to_json
from ..sim.plan.runner import DiskCache, Dispatcher, InlineRunner, ProcessRunner, RayRunner
from ..sim.plan.search import PlanRequest, PlanResult, plan
from ..sim.plan.slo import LatencySLO
from ..sim.plan.space import Base, SearchSpace
from ..sim.router import RouterConfig
from ..sim.simulate import ClusterConfig
from ..workload import WorkloadSpec
from .common import add_report_flag, add_simulation_flags, layered_values, lora_config, speculation_config, write_json
from .options import ConfigError, pick

if TYPE_CHECKING:
    from ..report import Frontier, Report

# Flag (= config field) -> (SearchSpace field, element type, default list). Each takes a comma list.
SEARCHED = {
    "hardware": ("hardware", str, "h100-sxm"),
    "tp": ("tp", int, "1,2,4,8"),
    "pp": ("pp", int, "1,2"),
    "weight_dtype": ("weight_dtypes", str, "bf16,fp8"),
    "scheduler": ("presets", str, "sarathi"),
    "max_num_batched_tokens": ("max_num_batched_tokens", int, "512,2048,8192"),
    "max_num_seqs": ("max_num_seqs", int, "256"),
    "router": ("routers", str, "round-robin,least-loaded"),
}
SKIPPED = (*SEARCHED, "replicas", "slo", "track_token_times")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="find the cheapest hardware, parallel plan and knobs that meet a latency SLO at a rate",
        description="Search hardware, TP/PP, replicas, router, scheduler preset, chunk size, max_num_seqs and weight "
        "dtype with the simulator; prune what does not fit in memory first. Workload flags are simulate's.",
    )
    add_simulation_flags(p, skip=SKIPPED)
    space = p.add_argument_group("search space (comma lists)")
    for name, (_, typ, default) in SEARCHED.items():
        space.add_argument("--" + name.replace("_", "-"), metavar="LIST", default=None,
                           help=f"{typ.__name__} values to try (default: {default})")
    p.add_argument("--slo", help="percentile targets, e.g. ttft_p90=2s,tpot_p90=100ms (stats p50, p90, p99, mean; "
                   "metrics ttft, tpot, e2e)")
    p.add_argument("--max-gpus", type=int, default=8, help="GPU budget of the whole deployment (default: 8)")
    p.add_argument("--price", help="dollars per GPU-hour for every hardware searched, e.g. h100-sxm=4.0,a100-80gb=2.2")
    p.add_argument("--objective", choices=("min-cost", "max-rate"), default="min-cost",
                   help="min-cost: cheapest plan meeting the SLO at --rate; max-rate: most req/s within --max-gpus")
    p.add_argument("--runner-ups", type=int, default=3, help="alternatives to report (default: 3)")
    p.add_argument("--frontier", type=int, default=8,
                   help="candidates simulated as whole clusters for runner-ups and the Pareto plot (default: 8)")
    p.add_argument("--capacity-tolerance", type=float, default=0.05,
                   help="capacity precision as a fraction of offline throughput (default: 0.05)")
    p.add_argument("--offline-sample", type=int, default=PlanRequest.offline_sample,
                   help="requests in each config's offline run that bounds its capacity "
                   f"(default: {PlanRequest.offline_sample})")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    p.add_argument("--ray", action="store_true", help="run the search as Ray tasks (a local Ray unless --ray-address)")
    p.add_argument("--ray-address", help="address of a running Ray cluster, e.g. ray://head:10001 or auto")
    p.add_argument("--cache-dir", default=None, help="per-candidate result cache (default: ~/.cache/batchserve/plan)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    p.add_argument("--json", metavar="FILE", help="write best, runner-ups, rejected candidates and reasons as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot cost vs latency of the verified candidates and the frontier")
    add_report_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_plan)


def _split(value: Any, typ: type, flag: str) -> tuple:
    """A comma list from a flag, or a list or scalar from TOML, as a tuple of `typ`."""
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        return tuple(typ(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ConfigError(f"--{flag.replace('_', '-')} {value!r}: expected a comma list of {typ.__name__}") from None


def parse_prices(spec: str | None) -> dict[str, float]:
    """`h100-sxm=4.0,a100=2.2` -> {catalog name: dollars per GPU-hour}."""
    if not spec:
        raise ConfigError("--price is required: dollars per GPU-hour for each hardware, e.g. h100-sxm=4.0")
    prices: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not price > 0 or price == float("inf"):
            raise ConfigError(f"--price: bad part {part.strip()!r}; expected HARDWARE=DOLLARS_PER_GPU_HOUR (> 0)")
        prices[get_hardware(name.strip()).name] = price
    return prices


def build_request(args: argparse.Namespace) -> PlanRequest:
    values = layered_values(args)
    searched = {SEARCHED[k][0]: _split(values.pop(k, SEARCHED[k][2]), SEARCHED[k][1], k) for k in SEARCHED}
    model = values.get("model", ClusterConfig.model)
    if not values.get("slo"):
        raise ConfigError("--slo is required, e.g. ttft_p90=2s,tpot_p90=100ms")
    slo = LatencySLO.parse(values.pop("slo"))
    rate = values.pop("rate", None)
    spec = WorkloadSpec(**{**pick(values, WorkloadSpec), "vocab_size": get_model(model).vocab_size})
    trace = values.get("workload")
    workload = Workload.from_trace(trace, spec) if trace else Workload.synthetic(spec)
    cluster = pick(values, ClusterConfig)
    quantized = [d for d in searched["weight_dtypes"] if d not in ("bf16", "fp16", "fp32")]
    if cluster.get("quantization") and quantized:
        raise ConfigError(f"--quantization {cluster['quantization']} packs float weights; weight dtype "
                          f"{quantized[0]} is quantized already: pass --weight-dtype bf16")
    base = Base(
        model=model,
        kv_cache_dtype=cluster.get("kv_cache_dtype", ClusterConfig.kv_cache_dtype),
        gpu_memory_utilization=cluster.get("gpu_memory_utilization", ClusterConfig.gpu_memory_utilization),
        quantization=cluster.get("quantization"),
        quantization_group_size=cluster.get("quantization_group_size", ClusterConfig.quantization_group_size),
        quantize_lm_head=cluster.get("quantize_lm_head", ClusterConfig.quantize_lm_head),
        scheduler_overrides=tuple(sorted(pick(values, SchedulerConfig).items())),
        cache=CacheConfig(**pick(values, CacheConfig)),
        efficiency=Efficiency(**pick(values, Efficiency)),
        router=RouterConfig(**pick(values, RouterConfig)),
        lora=lora_config(values),
        **speculation_config(values),
    )
    space = SearchSpace(model=model, max_gpus=args.max_gpus, **searched)
    return PlanRequest(space, base, workload, slo, parse_prices(args.price), rate, args.objective, args.runner_ups,
                       args.frontier, args.capacity_tolerance, args.offline_sample)


def _runner(args: argparse.Namespace) -> InlineRunner | ProcessRunner | RayRunner:
    if args.ray or args.ray_address:
        return RayRunner(args.ray_address)
    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    return ProcessRunner(workers) if workers > 1 else InlineRunner()


def cmd_plan(args: argparse.Namespace) -> int:
    req = build_request(args)
    cache = None if args.no_cache else DiskCache(args.cache_dir or Path.home() / ".cache" / "batchserve" / "plan")
    runner = _runner(args)
    bars: dict[str, Progress] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.setdefault(phase, Progress(f"plan: {phase}", total, enabled=not args.quiet, unit="tasks"))
        bar.update(done, f"{dispatcher.counts['simulations']} simulations")

    dispatcher = Dispatcher(runner, cache, progress)
    try:
        result = plan(req, dispatcher)
    finally:
        runner.close()
        for bar in bars.values():
            bar.__exit__()
    print(format_report(result))
    data = to_json(result)
    if args.json:
        write_json(args.json, data)
    if args.plot:
        _plot(result, args.plot)
    if args.report:
        from ..report import write_report

        write_report(_report(result, data), args.report)
    return 0 if result.best else 1


def _frontier(result: PlanResult) -> Frontier:
    """Verified candidates on cost vs the first SLO target's latency: what --plot and --report draw."""
    from ..report import Frontier

    verified = [c for c in result.accepted if c.probe and c.probe.checks]
    target = next(iter(result.request.slo.targets))
    return Frontier(target.name, target.seconds,
                    [(c.cost_per_hour, latency_of(c), f"{c.replicas}x {c.config.label()}") for c in verified],
                    [(c.cost_per_hour, latency_of(c)) for c in pareto(verified)])


def _plot(result: PlanResult, path: str) -> None:
    from ..plots import plot_plan

    f = _frontier(result)
    plot_plan(f.points, f.pareto, f.metric, f.target_s, path,
              title=f"{result.request.base.model}: cost vs {f.metric} at the target rate")


PLAN_HEADLINE = (
    ("best.cost_per_hour", "Cost of the best plan ($/hour)"), ("best.num_gpus", "GPUs"),
    ("best.replicas", "Replicas"), ("best.hardware", "Hardware"), ("best.tp", "Tensor parallel"),
    ("best.pp", "Pipeline parallel"), ("best.capacity", "Capacity (req/s)"),
    ("best.cost_per_million_output_tokens", "Cost per million output tokens ($)"), ("best.min_margin", "Min SLO margin"),
    ("closest.cost_per_hour", "Closest candidate's cost ($/hour)"), ("search.simulations", "Simulations run"),
)


def _report(result: PlanResult, data: dict[str, Any]) -> Report:
    """The plan's report: best plan, frontier; an infeasible plan says so first and why the closest missed."""
    from ..report import Headline, Report

    req = result.request
    problem = None
    if result.best is None:
        closest = result.closest
        problem = (f"Infeasible: no deployment within {req.space.max_gpus} GPUs meets the SLO {req.slo}"
                   + (f" at {req.rate:g} req/s" if req.objective == "min-cost" else "")
                   + (f"; closest: {closest.replicas}x {closest.config.label()} ({closest.why})" if closest else "")
                   + ". Relax the SLO, raise --max-gpus or widen the search.")
    frontier = _frontier(result)
    config = {k: data[k] for k in ("objective", "model", "rate", "slo", "max_gpus", "prices")}
    return Report(f"plan: {req.base.model}, {req.objective}, SLO {req.slo}", "plan", Headline.pick(data, PLAN_HEADLINE),
                  config, problem=problem, frontier=frontier if frontier.points else None)

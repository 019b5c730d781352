"""`batchserve run`: an offline batch job over a JSONL file, or its estimate on simulated hardware."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from ..config import SCHEDULER_PRESETS
from ..jobs.estimate import LOCAL_CPU, EstimateConfig
from ..jobs.openai_format import model_name
from ..jobs.runner import JobConfig, Summary
from ..jobs.setup import RunSetup, default_device
from ..sim.router import RouterConfig
from ..tables import REPORT_WIDTH, render_table
from .common import (
    add_engine_flags,
    add_report_flag,
    add_served_model_name,
    add_tool_call_parser,
    engine_args,
    served_model_names,
    write_json,
)
from .lora_options import add_lora_flags, lora_engine_args, lora_modules
from .options import add_dataclass_flags, given

if TYPE_CHECKING:
    from ..jobs.batch_io import Done
    from ..jobs.engine_backend import EngineBackend
    from ..jobs.estimate import Estimate
    from ..jobs.eta import LiveEta
    from ..report import Report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run an offline batch job (OpenAI Batch JSONL in, results JSONL out), resumable",
        description="Run every request of a JSONL file through a model and append one result line per input "
        "line to -o. Input: the OpenAI Batch API format ({custom_id, method, url, body} with url "
        "/v1/chat/completions or /v1/completions) or a plain form (a prompt per line, or {\"prompt\": ...} "
        "with sampling fields), detected from the first line; plain lines get their line number as custom_id. "
        "Killed and rerun with the same arguments, the job skips what -o holds and finishes the rest. "
        "Requests sharing a prompt prefix run together so the prefix is computed once "
        "(regrouped within --window requests at a time).",
    )
    p.add_argument("input", help="requests JSONL")
    p.add_argument("-o", "--output", help="results JSONL, appended to (required unless --estimate)")
    g = p.add_argument_group("job")
    g.add_argument("--preserve-order", action="store_true", help="write results in input order (buffers up to a window)")
    g.add_argument("--no-prefix-order", dest="prefix_aware", action="store_false",
                   help="run requests in input order instead of grouped by shared prefix")
    g.add_argument("--window", type=int, default=JobConfig.window,
                   help="requests regrouped by prefix at a time; bounds the prompts held in memory "
                   f"(default: {JobConfig.window})")
    g.add_argument("--seed", type=int, default=0,
                   help="job seed: requests without body.seed get one derived from it and their custom_id")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="max_tokens for bodies that do not set it (default: OpenAI's, 16 for completions and the "
                   "rest of the context for chat)")
    add_served_model_name(g)
    add_tool_call_parser(g)
    g.add_argument("--temperature", type=float, default=None,
                   help="temperature for bodies that do not set it (default 1.0, as in the OpenAI API)")
    g.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    add_report_flag(g)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    e = p.add_argument_group("engine")
    add_engine_flags(e)
    e.add_argument("--scheduler", choices=sorted(SCHEDULER_PRESETS), default=RunSetup.scheduler,
                   help=f"scheduler preset (default: {RunSetup.scheduler})")
    e.add_argument("--max-num-batched-tokens", type=int, default=RunSetup.max_num_batched_tokens,
                   help="token budget of one step")
    e.add_argument("--max-num-seqs", type=int, default=RunSetup.max_num_seqs, help="requests running at once")
    r = p.add_argument_group("scale out and estimate")
    r.add_argument("--replicas", type=int, default=1, help="engine replicas as Ray actors (needs the [ray] extra)")
    r.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    r.add_argument("--estimate", metavar="HARDWARE",
                   help="do not run: simulate the job on this hardware (catalog name or profile JSON) with the run's "
                   "dtype, scheduler, KV cache and replicas, and print predicted wall time and throughput; without "
                   "--sample or --profile-from it assumes every request generates its max_tokens (an upper bound)")
    r.add_argument("--profile-from", metavar="RUN_JSON",
                   help="with --estimate: output lengths and step costs measured by an earlier `run --json` "
                   "(refused if measured on another device or dtype than the estimate's)")
    r.add_argument("--and-run", action="store_true",
                   help="with --estimate: then run the job (-o), with the estimate's ETA and an estimated-vs-actual "
                   "summary")
    r.add_argument("--price-per-hour", type=float, default=None, help="with --estimate: price of one GPU-hour")
    add_dataclass_flags(p, EstimateConfig, "estimate from evidence (with --estimate)")
    add_dataclass_flags(p, RouterConfig, "prefix-affinity routing (with --replicas > 1 or --estimate)")
    add_lora_flags(p)
    p.set_defaults(func=cmd_run)


def _job_config(args: argparse.Namespace) -> JobConfig:
    defaults = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    return JobConfig(prefix_aware=args.prefix_aware, window=args.window, preserve_order=args.preserve_order,
                     seed=args.seed, defaults=defaults, served_model_names=tuple(served_model_names(args)),
                     tool_call_parser=args.tool_call_parser, lora_modules=tuple(lora_modules(args)),
                     keep_records=bool(args.report))


def run_setup(args: argparse.Namespace) -> RunSetup:
    """The one place run's engine flags become values: the engine and the estimate's twin both read it."""
    return RunSetup(model=args.model, **engine_args(args), scheduler=args.scheduler,
                    max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                    replicas=args.replicas, lora=tuple(sorted(lora_engine_args(args).items())))


def _check(args: argparse.Namespace, est: EstimateConfig) -> None:
    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    if not args.estimate:
        for flag, value in (("--price-per-hour", args.price_per_hour is not None), ("--sample", est.sample),
                            ("--profile-from", args.profile_from), ("--and-run", args.and_run)):
            if value:
                raise ValueError(f"{flag} is only used with --estimate HARDWARE")
    if (args.and_run or not args.estimate) and not args.output:
        raise ValueError("give -o/--output for the results (or --estimate HARDWARE to only predict)")
    if est.sample and args.output and args.preserve_order:
        raise ValueError("--sample writes its results to -o first, out of input order; drop --preserve-order or -o")
    if est.sample and (args.replicas > 1 or args.ray_address):
        raise ValueError("--sample runs on this machine's engine; estimate with --replicas 1, then scale the run out")


def cmd_run(args: argparse.Namespace) -> int:
    est = EstimateConfig(**given(args, EstimateConfig))
    _check(args, est)
    config = _job_config(args)
    router = RouterConfig(**given(args, RouterConfig))
    setup = run_setup(args)
    local = args.replicas == 1 and not args.ray_address
    make_backend = _backend_factory(setup)
    estimate = _estimate(args, setup, config, router, est, make_backend) if args.estimate else None
    if args.estimate and estimate is None:  # --and-run on a finished job: nothing to predict, the run says so
        print(f"nothing left to estimate: every request of {args.input} is already in {args.output}")
    if estimate is not None and not args.and_run:
        data = {"input": args.input, "model": args.model, "estimate": estimate.info,
                "summary": estimate.summary.to_dict(),
                "measurements": estimate.measurements.to_dict() if estimate.measurements else None}
        _write_outputs(args, data, {"predicted": estimate.summary.records})
        return 0
    try:
        if not local:
            from ..jobs.ray_runner import run_ray_job

            summary = run_ray_job(args.input, args.output, args.model, setup.engine_args(), config, args.replicas,
                                  args.ray_address, args.quiet, router)
            measurements = None
        else:
            from ..jobs.engine_backend import local_job

            summary = local_job(args.input, args.output, args.model, setup.engine_args(), config, args.quiet,
                                make_backend, _eta_factory(args, setup, config, router, est, estimate))
            measurements = make_backend().log.take()
            measurements.wall_s, measurements.num_requests = summary.wall_s, summary.num_ok
    except KeyboardInterrupt:
        if args.report:
            _interrupted_report(args, estimate)
        raise
    versus = _versus(estimate, summary) if estimate is not None else None
    print(summary_table(summary, f"batch job: {model_name(args.model)}, {args.replicas} replica(s)",
                        extra=_versus_rows(versus) if versus else None))
    data = {"input": args.input, "output": args.output, "model": args.model, "replicas": args.replicas,
            "summary": summary.to_dict(), "estimate": estimate.info if estimate is not None else None,
            "estimated_vs_actual": versus,
            "measurements": measurements.to_dict() if measurements is not None else None}
    runs = {"measured": summary.records}
    if estimate is not None:
        runs["predicted"] = estimate.summary.records
    _write_outputs(args, data, runs)
    return 0


def _write_outputs(args: argparse.Namespace, data: dict[str, Any], runs: dict[str, list]) -> None:
    """--json and --report of one result, from the same dict so the two agree."""
    if args.json:
        write_json(args.json, data)
    if args.report:
        from ..report import write_report

        write_report(run_report(args, data, runs), args.report)


def _backend_factory(setup: RunSetup) -> Callable[[], EngineBackend]:
    """One engine for the whole command, loaded on first use (a sample and the run that follows share it)."""

    @cache
    def make() -> EngineBackend:
        from ..engine.llm_engine import LLMEngine
        from ..jobs.engine_backend import EngineBackend

        return EngineBackend(LLMEngine(setup.model, **setup.engine_args()))

    return make


def _eta_factory(args: argparse.Namespace, setup: RunSetup, config: JobConfig, router: RouterConfig,
                 est: EstimateConfig, estimate: Estimate | None) -> Callable[[EngineBackend, Done], LiveEta] | None:
    """The live ETA's twin: on the estimate's hardware, else on the CPU placeholder (scaled by measured steps)."""
    hardware = args.estimate or (LOCAL_CPU if (setup.device or default_device()) == "cpu" else None)
    try:
        sim = setup.sim_setup(hardware) if hardware is not None else None
    except ValueError:  # a setup the twin does not model (e.g. --quantization): the progress line says "at this rate"
        sim = None
    if sim is None:
        return None
    from ..jobs.estimate import plan_job, stands_for_this_cpu, with_peaks
    from ..jobs.eta import LiveEta

    prior = [estimate.measurements] if estimate is not None and estimate.measurements is not None else []

    def make(backend: EngineBackend, done: Done) -> LiveEta:
        job = plan_job(args.input, done, setup, config)
        here = with_peaks(sim, *backend.peaks) if stands_for_this_cpu(sim, setup) else sim
        return LiveEta(job, here, config, router, est, backend.log, prior)

    return make


def _estimate(args: argparse.Namespace, setup: RunSetup, config: JobConfig, router: RouterConfig,
              est: EstimateConfig, make_backend: Callable[[], EngineBackend]) -> Estimate | None:
    """Print and return the job's estimate; None when --and-run finds every request already done."""
    from ..jobs.estimate import NothingToEstimate, estimate_job

    try:
        estimate = estimate_job(args.input, args.output, setup, args.estimate, config, est, router,
                                args.profile_from, make_backend)
    except NothingToEstimate:
        if args.and_run and args.output and os.path.exists(args.output):
            return None
        raise
    summary, info = estimate.summary, estimate.info
    lo, hi = estimate.wall_s_range
    scale_from = [f"{info['steps_measured']} steps measured here"] if info["steps_measured"] else []
    if "probe" in info:
        probe = info["probe"]
        scale_from.append(f"a probe of {probe['steps']} decode steps of {probe['width']} rows "
                          f"({probe['wall_s']:.2f} s, x{probe['time_scale_ratio']:.3g})")
    rows: dict[str, Any] = {
        "Predicted wall time p10-p90 (s):": f"{lo:.2f} - {hi:.2f}",
        "Output tokens p10-p90:": f"{estimate.output_tokens_range[0]:.0f} - {estimate.output_tokens_range[1]:.0f}",
        "Weight dtype:": info["weight_dtype"] + (f", {info['quantization']} weight-only" if info["quantization"] else ""),
        "GPUs:": str(info["num_gpus"]), "KV blocks per replica:": str(info["num_kv_blocks"]),
        "Step time scale:": f"{info['time_scale']:.3g} from {' and '.join(scale_from)}"
        if scale_from else "1 (the profile's costs as they are)",
    }
    if "peaks" in info:
        rows["Peaks measured here:"] = (f"{info['peaks']['flops'] / 1e12:.2f} TFLOP/s, "
                                        f"{info['peaks']['memory_bandwidth'] / 1e9:.0f} GB/s")
    if "spec_acceptance_rate" in info:
        rows["Draft acceptance (alpha):"] = (f"{info['spec_acceptance_rate']:.3g}, drafts found "
                                             f"{info['spec_draft_rate']:.0%}, from {info['spec_acceptance_from']}")
    if "sample" in info:
        rows["Sample run (requests, s):"] = f"{info['sample']['num_requests']}, {info['sample']['wall_s']:.2f}"
        ratio = info["sample"].get("step_time_ratio")
        if ratio is not None:
            rows["Sample steps, measured / charged:"] = f"{ratio:.2f}"
    if "sample_for_target" in info:
        wider = info["sample_for_target"]
        rows["For a tighter token range:"] = (f"--sample {wider['sample']} (about +-"
                                              f"{100 * wider['target_token_error']:g}% at p10-p90)")
    if args.price_per_hour is not None:
        info["cost"] = summary.wall_s / 3600 * info["num_gpus"] * args.price_per_hour
        rows["Predicted cost:"] = f"{info['cost']:.4g}"
    print(summary_table(summary, f"estimate: {info['model']} on {args.replicas} x {info['hardware']}",
                        wall_label="Predicted wall time (s):", extra=rows))
    print(f"assumes {info['assumes']}")
    return estimate


def _versus(estimate: Estimate, actual: Summary) -> dict[str, float]:
    """Estimated vs actual for the whole job (the sample ran in this command, so its time and tokens count)."""
    sample = estimate.info.get("sample", {})
    wall = actual.wall_s + sample.get("wall_s", 0.0)
    tokens = actual.output_tokens + sample.get("output_tokens", 0)
    predicted = estimate.summary
    lo, hi = estimate.wall_s_range
    return {"estimated_wall_s": predicted.wall_s, "estimated_wall_s_p10": lo, "estimated_wall_s_p90": hi,
            "actual_wall_s": wall, "estimated_output_token_throughput": predicted.output_token_throughput,
            "actual_output_token_throughput": tokens / wall if wall else 0.0}


def _versus_rows(v: dict[str, float]) -> dict[str, str]:
    wall, predicted = v["actual_wall_s"], v["estimated_wall_s"]
    error = f" ({wall / predicted - 1:+.1%} vs estimate)" if predicted else ""
    return {
        "Estimated wall time, job (s):":
            f"{predicted:.2f} (p10-p90 {v['estimated_wall_s_p10']:.2f} - {v['estimated_wall_s_p90']:.2f})",
        "Actual wall time, job (s):": f"{wall:.2f}{error}",
        "Estimated output tok/s, job:": f"{v['estimated_output_token_throughput']:.1f}",
        "Actual output tok/s, job:": f"{v['actual_output_token_throughput']:.1f}",
    }


RUN_HEADLINE = (
    ("summary.num_ok", "Requests ok"), ("summary.num_failed", "Requests failed"),
    ("summary.num_skipped", "Skipped (done by an earlier run)"), ("summary.prompt_tokens", "Prompt tokens"),
    ("summary.prompt_tokens_saved", "Prompt tokens saved by prefix reuse"),
    ("summary.prefix_cache_hit_rate", "Prefix cache hit rate"), ("summary.output_tokens", "Output tokens"),
    ("summary.wall_s", "Wall time (s)"), ("summary.output_token_throughput", "Output token throughput (tok/s)"),
    ("summary.total_token_throughput", "Total token throughput (tok/s)"),
    ("estimate.predicted_wall_s", "Predicted wall time (s)"), ("estimate.cost", "Predicted cost"),
    ("estimated_vs_actual.estimated_wall_s", "Estimated wall time, job (s)"),
    ("estimated_vs_actual.actual_wall_s", "Actual wall time, job (s)"),
)


def run_report(args: argparse.Namespace, data: dict[str, Any], runs: dict[str, list]) -> Report:
    """The report of a run or of its estimate: what the summary table says, plus latency and queue charts."""
    from ..report import Headline, Report

    v = data.get("estimated_vs_actual")
    versus = [] if not v else [
        ("wall time, job (s)", v["estimated_wall_s"], v["actual_wall_s"]),
        ("output tok/s, job", v["estimated_output_token_throughput"], v["actual_output_token_throughput"])]
    estimate_only = "output" not in data
    notes = []
    if estimate_only:
        notes.append(f"Estimate only: nothing ran. Assumes {data['estimate']['assumes']}.")
    if data["summary"]["num_failed"]:
        notes.append(f"{data['summary']['num_failed']} request(s) failed; their error lines are in {args.output}.")
    if "predicted" in runs and "measured" in runs and data["estimate"].get("sample"):
        notes.append("The predicted run covers the whole job; the measured one the requests after the sample.")
    title = f"batch job {'estimate' if estimate_only else 'run'}: {model_name(args.model)} on {args.input}"
    config = {"input": data["input"], "model": data["model"], "estimate": data["estimate"],
              "args": {k: v for k, v in vars(args).items() if k != "func"}}
    return Report(title, "run", Headline.pick(data, RUN_HEADLINE), config, notes=notes, runs=runs, versus=versus)


def _interrupted_report(args: argparse.Namespace, estimate: Estimate | None) -> None:
    """An interrupted job's report says so first and how far it got, instead of charts of nothing."""
    from ..jobs.batch_io import check_unique_ids, detect_format, scan_output
    from ..report import Headline, Report, write_report

    done, total = scan_output(args.output), check_unique_ids(args.input, detect_format(args.input))
    data = {"done": done.num_ok + done.num_failed, "total": total}
    problem = (f"Interrupted: {data['done']} of {total} requests have results in {args.output}. "
               "Rerun the same command to finish the rest (finished results are kept).")
    write_report(Report(f"batch job run (interrupted): {model_name(args.model)} on {args.input}", "run",
                        Headline.pick(data, (("done", "Requests with results"), ("total", "Requests in the job"))),
                        {"input": args.input, "model": args.model,
                         "estimate": estimate.info if estimate is not None else None}, problem=problem), args.report)


def summary_table(s: Summary, title: str, wall_label: str = "Wall time (s):", extra: dict[str, str] | None = None) -> str:
    """The end-of-job table, in the layout of the other commands' reports."""
    rows = {
        "Requests ok / failed:": f"{s.num_ok} / {s.num_failed}",
        "Skipped (done by an earlier run):": str(s.num_skipped),
        "Prompt tokens:": str(s.prompt_tokens),
        "Prompt tokens computed:": str(s.computed_prompt_tokens),
        "Prompt tokens saved by prefix reuse:": str(max(0, s.prompt_tokens - s.computed_prompt_tokens)),
        "Prefix cache hit rate:": f"{s.prefix_cache_hit_rate:.1%}",
        "Output tokens:": str(s.output_tokens),
        **({"Draft tokens accepted / proposed:": f"{s.spec_accepted_tokens} / {s.spec_draft_tokens} "
            f"({s.spec_accepted_tokens / s.spec_draft_tokens:.1%})"} if s.spec_draft_tokens else {}),
        wall_label: f"{s.wall_s:.2f}",
        "Request throughput (req/s):": f"{s.to_dict()['request_throughput']:.2f}",
        "Output token throughput (tok/s):": f"{s.output_token_throughput:.1f}",
        "Total token throughput (tok/s):": f"{s.total_token_throughput:.1f}",
        **(extra or {}),
    }
    return render_table(list(rows.items()), ("<", ">"), title=title, sep="", width=REPORT_WIDTH)

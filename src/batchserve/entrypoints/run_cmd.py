"""`batchserve run`: an offline batch job over a JSONL file, or its estimate on simulated hardware."""

from __future__ import annotations

import argparse
from typing import Any

from ..jobs.runner import JobConfig, Summary
from ..sim.router import RouterConfig
from ..tables import REPORT_WIDTH, render_table
from .common import (
    add_engine_flags, add_served_model_name, add_tool_call_parser, engine_args, served_model_names, write_json,
)
from .lora_options import add_lora_flags, lora_engine_args, lora_modules
from .options import add_dataclass_flags, given


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
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    e = p.add_argument_group("engine")
    add_engine_flags(e)
    e.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    e.add_argument("--max-num-seqs", type=int, default=256, help="requests running at once")
    r = p.add_argument_group("scale out and estimate")
    r.add_argument("--replicas", type=int, default=1, help="engine replicas as Ray actors (needs the [ray] extra)")
    r.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    r.add_argument("--estimate", metavar="HARDWARE",
                   help="do not run: simulate the job on this hardware (catalog name or profile JSON) and print "
                   "predicted wall time and throughput; assumes every request generates its max_tokens")
    r.add_argument("--price-per-hour", type=float, default=None, help="with --estimate: price of one GPU-hour")
    add_dataclass_flags(p, RouterConfig, "prefix-affinity routing (with --replicas > 1 or --estimate)")
    add_lora_flags(p)
    p.set_defaults(func=cmd_run)


def _job_config(args: argparse.Namespace) -> JobConfig:
    defaults = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    return JobConfig(prefix_aware=args.prefix_aware, window=args.window, preserve_order=args.preserve_order,
                     seed=args.seed, defaults=defaults, served_model_names=tuple(served_model_names(args)),
                     tool_call_parser=args.tool_call_parser, lora_modules=tuple(lora_modules(args)))


def cmd_run(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    if args.price_per_hour is not None and not args.estimate:
        raise ValueError("--price-per-hour is only used with --estimate")
    config = _job_config(args)
    router = RouterConfig(**given(args, RouterConfig))
    engine_kwargs = dict(**engine_args(args), max_num_batched_tokens=args.max_num_batched_tokens,
                         max_num_seqs=args.max_num_seqs, **lora_engine_args(args))
    if args.estimate:
        return _estimate(args, config, router)
    if not args.output:
        raise ValueError("give -o/--output for the results (or --estimate HARDWARE to only predict)")
    if args.replicas > 1 or args.ray_address:
        from ..jobs.ray_runner import run_ray_job

        summary = run_ray_job(args.input, args.output, args.model, engine_kwargs, config, args.replicas,
                              args.ray_address, args.quiet, router)
    else:
        from ..jobs.engine_backend import local_job

        summary = local_job(args.input, args.output, args.model, engine_kwargs, config, args.quiet)
    print(summary_table(summary, f"batch job: {args.model}, {args.replicas} replica(s)"))
    if args.json:
        write_json(args.json, {"input": args.input, "output": args.output, "model": args.model,
                               "replicas": args.replicas, "summary": summary.to_dict()})
    return 0


def _estimate(args: argparse.Namespace, config: JobConfig, router: RouterConfig) -> int:
    from ..jobs.estimate import estimate_job

    summary, info = estimate_job(args.input, args.model, args.estimate, config, args.max_num_batched_tokens,
                                 args.max_num_seqs, args.replicas, router)
    rows: dict[str, Any] = {"GPUs:": str(info["num_gpus"]), "KV blocks per replica:": str(info["num_kv_blocks"])}
    if args.price_per_hour is not None:
        info["cost"] = summary.wall_s / 3600 * info["num_gpus"] * args.price_per_hour
        rows["Predicted cost:"] = f"{info['cost']:.4g}"
    print(summary_table(summary, f"estimate: {info['model']} on {args.replicas} x {info['hardware']}",
                        wall_label="Predicted wall time (s):", extra=rows))
    if args.json:
        write_json(args.json, {"input": args.input, "model": args.model, "estimate": info,
                               "summary": summary.to_dict()})
    return 0


def summary_table(s: Summary, title: str, wall_label: str = "Wall time (s):", extra: dict[str, str] | None = None) -> str:
    """The end-of-job table, in the layout of the other commands' reports."""
    rows = {
        "Requests ok / failed:": f"{s.num_ok} / {s.num_failed}",
        "Skipped (done by an earlier run):": str(s.num_skipped),
        "Prompt tokens:": str(s.prompt_tokens),
        "Prompt tokens computed:": str(s.computed_prompt_tokens),
        "Prefix cache hit rate:": f"{s.prefix_cache_hit_rate:.1%}",
        "Output tokens:": str(s.output_tokens),
        wall_label: f"{s.wall_s:.2f}",
        "Request throughput (req/s):": f"{s.to_dict()['request_throughput']:.2f}",
        "Output token throughput (tok/s):": f"{s.output_token_throughput:.1f}",
        "Total token throughput (tok/s):": f"{s.total_token_throughput:.1f}",
        **(extra or {}),
    }
    return render_table(list(rows.items()), ("<", ">"), title=title, sep="", width=REPORT_WIDTH)

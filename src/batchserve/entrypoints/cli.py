"""The `batchserve` command line: one subcommand per job, sharing one vocabulary of flags."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from ..embedded_model import default_model
from ..metrics import format_table, steady_throughput, write_per_request
from ..sim.hardware import HARDWARE
from ..sim.models import MODELS
from ..sim.simulate import SimSetup
from ..tables import render_table
from . import calibrate_cmd, plan_cmd, run_cmd, serve_cmd
from .common import (
    Resolved, add_engine_flags, add_report_flag, add_simulation_flags, engine_args, layered_values, resolve_values, run_simulation,
    write_json,
)
from .lora_options import add_lora_flags, lora_engine_args, lora_modules
from .options import ConfigError

def _parse_sweep(spec: str) -> tuple[str, list[float]]:
    """`rate=1:20:1` (start:stop:step, stop included) or `rate=2,4,8`."""
    name, sep, values = spec.partition("=")
    if not sep or name.strip() != "rate":
        raise ConfigError(f"--sweep {spec!r}: expected rate=START:STOP:STEP or rate=V1,V2,... (only rate sweeps)")
    try:
        if ":" in values:
            start, stop, step = (float(v) for v in values.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            points = [round(start + i * step, 10) for i in range(count) if start + i * step <= stop + 1e-9]
        else:
            points = [float(v) for v in values.split(",")]
    except ValueError:
        raise ConfigError(f"--sweep {spec!r}: values must be START:STOP:STEP with STEP > 0, or a comma list") from None
    if not points or min(points) <= 0:
        raise ConfigError(f"--sweep {spec!r}: rates must be > 0")
    return "rate", points


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="predict throughput and latency of a workload on simulated hardware",
        description="Drive batchserve's scheduler with a roofline cost model of a model on hardware. "
        "Every config field is a flag of the same name and may come from a TOML file (--config).",
    )
    add_simulation_flags(p)
    p.add_argument("--sweep", help="load sweep, e.g. rate=1:20:1 or rate=2,4,8; prints and plots latency vs throughput")
    p.add_argument("--json", metavar="FILE", help="write config and metrics as JSON")
    p.add_argument("--plot", metavar="PNG", help="write latency CDFs and throughput/queue over time (sweep: latency vs throughput)")
    p.add_argument("--per-request", metavar="JSONL", help="write one record per request")
    add_report_flag(p)
    p.add_argument("--list", action="store_true", help="list catalog models and hardware, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_simulate)


def _header(setup: SimSetup) -> str:
    d = setup.deployment
    s = setup.scheduler
    return (
        f"{d.model.name} on {setup.cluster.replicas} x {d.num_gpus} x {d.hardware.name} "
        f"(tp={d.tp}, pp={d.pp}, {d.weight_dtype}), router={setup.cluster.router}, "
        f"max_num_batched_tokens={s.max_num_batched_tokens}, max_num_seqs={s.max_num_seqs}, "
        f"chunked_prefill={s.enable_chunked_prefill}, policy={s.policy}, KV blocks/replica={setup.cache.num_blocks}"
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.list:
        print("models:   " + ", ".join(MODELS))
        print("hardware: " + ", ".join(HARDWARE))
        return 0
    run = resolve_values(layered_values(args))
    print(_header(run.setup))
    if args.sweep:
        return _sweep(args, run)
    result, summary, sim_info = run_simulation(run, args.quiet)
    print(format_table(summary, title="simulated"))
    print(
        f"simulated {len(result.records)} requests ({result.simulated_s:.1f} s simulated) in "
        f"{result.wall_s:.2f} s wall: {sim_info['simulated_requests_per_wall_s']:.0f} requests/s"
        + (f"; {len(result.rejected)} rejected, e.g. {result.rejected[0][1]}" if result.rejected else "")
    )
    if result.spec_draft_tokens:
        print(f"draft tokens accepted / proposed: {result.spec_accepted_tokens} / {result.spec_draft_tokens} "
              f"({result.spec_accepted_tokens / result.spec_draft_tokens:.1%}; "
              f"--spec-acceptance-rate {run.setup.spec_acceptance.spec_acceptance_rate})")
    data = {"config": run.config(), "metrics": summary, "simulation": sim_info}
    if args.json:
        write_json(args.json, data)
    if args.report:
        from ..report import Report, write_report
        from ..report.content import summary_headline

        write_report(Report(_header(run.setup), "simulate", summary_headline(data, "metrics"), data["config"],
                            runs={"simulated": result.records}), args.report)
    if args.per_request:
        write_per_request(result.records, args.per_request)
    if args.plot:
        from ..plots import plot_run

        plot_run(result.records, summary, args.plot, title=_header(run.setup))
    return 0


def _sweep(args: argparse.Namespace, run: Resolved) -> int:
    if args.report:
        raise ConfigError("--report draws one run; drop --sweep for it (--plot draws the sweep)")
    if run.trace:
        raise ConfigError("--sweep rate=... needs a synthetic workload; a trace fixes its own arrival times")
    _, rates = _parse_sweep(args.sweep)
    offline, _, _ = run_simulation(replace(run, spec=replace(run.spec, rate=None)), args.quiet, label=" capacity")
    capacity = steady_throughput(offline.records)
    points: list[tuple[float, dict]] = []
    rows = []
    for rate in rates:
        _, summary, sim_info = run_simulation(
            replace(run, spec=replace(run.spec, rate=rate)), args.quiet, label=f" rate={rate:g}"
        )
        points.append((rate, summary))
        rows.append({"rate": rate, "load": rate / capacity, "metrics": summary, "simulation": sim_info})
    print(_sweep_table(points, capacity))
    if args.json:
        write_json(args.json, {"config": run.config(), "capacity_request_throughput": capacity, "sweep": rows})
    if args.plot:
        from ..plots import plot_sweep

        plot_sweep(points, args.plot, title=_header(run.setup))
    return 0


def _sweep_table(points: Sequence[tuple[float, dict]], capacity: float) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f}ms"

    rows = [
        [f"{rate:g}", f"{rate / capacity:.0%}", f"{s['request_throughput'] or 0:.2f}",
         f"{s['output_token_throughput'] or 0:.0f}", ms(s["ttft_s"]["p50"]), ms(s["ttft_s"]["p99"]),
         ms(s["tpot_s"]["p50"]), ms(s["tpot_s"]["p99"]), "-" if s.get("goodput") is None else f"{s['goodput']:.2f}"]
        for rate, s in points
    ]
    header = ["rate", "load", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "goodput"]
    lines = [f"capacity {capacity:.2f} req/s (steady throughput with all requests queued at once); load = rate / capacity",
             render_table(rows, (">8", ">6", ">8", ">10", ">9", ">9", ">9", ">9", ">8"), header, underline=True)]
    over = [rate for rate, _ in points if rate > capacity]
    if over:
        lines.append(f"saturated from rate {min(over):g} req/s: above capacity, queues grow without bound")
    return "\n".join(lines)


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text for a prompt with a real model (a quick look)",
                       description="Run a model (HF directory or the built-in 'tiny') on one or more prompts.")
    add_engine_flags(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for several")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n", type=int, default=1, help="completions per prompt")
    p.add_argument("--stop", action="append", default=[], help="stop string; repeat for several")
    p.add_argument("--json", metavar="FILE", help="write prompts, outputs and token ids as JSON")
    add_lora_flags(p)
    p.add_argument("--lora", metavar="NAME", help="run every prompt under this adapter of --lora-modules")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..request import SamplingParams
    from .llm import LLM

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, n=args.n, stop=args.stop)
    adapters = {a.lora_name: a for a in lora_modules(args)}
    if args.lora is not None and args.lora not in adapters:
        raise ConfigError(f"--lora {args.lora!r} is not one of --lora-modules ({', '.join(adapters) or 'none given'})")
    lora = adapters.get(args.lora)
    llm = LLM(args.model, **engine_args(args), **lora_engine_args(args))
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params, use_tqdm=False,
                           lora_request=lora)
    else:
        outputs = llm.generate(args.prompt, params, use_tqdm=False, lora_request=lora)
    records = []
    for prompt, out in zip(args.prompt, outputs):
        for c in out.outputs:
            print(f"--- prompt: {prompt!r} ({len(out.prompt_token_ids)} tokens), completion {c.index}, "
                  f"{len(c.token_ids)} tokens, finish_reason={c.finish_reason}")
            print(c.text)
            records.append({"prompt": prompt, "index": c.index, "text": c.text, "token_ids": c.token_ids,
                            "finish_reason": c.finish_reason})
    if args.json:
        write_json(args.json, {"model": args.model, "outputs": records})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchserve", description="Batched LLM inference: run models, and simulate deployments."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _simulate_parser(sub)
    _generate_parser(sub)
    run_cmd.add_parser(sub)
    plan_cmd.add_parser(sub)
    serve_cmd.add_parser(sub)
    calibrate_cmd.add_parsers(sub)
    return parser


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (a handler holding the stream it started with would write to
    a closed one after a test or a caller swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def show_notices(quiet: bool) -> None:
    """batchserve's own INFO messages on stderr (a first-use kernel build, a dtype the CPU lacks); other
    libraries' logging stays as they set it. Once a process; -q keeps warnings only."""
    log = logging.getLogger("batchserve")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("batchserve: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_notices(getattr(args, "quiet", False))
    try:
        if getattr(args, "engine_model", False) and args.model is None:
            args.model = default_model()
        return args.func(args)
    except (ValueError, OSError) as err:  # config, catalog, workload and fit errors all say what to do
        print(f"batchserve {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`batchserve serve` (the OpenAI-compatible server) and `batchserve bench serve` (its load generator)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping

from ..config import SCHEDULER_PRESETS, CacheConfig, SchedulerConfig
from ..metrics import SLO, format_table, summarize, write_per_request
from ..workload import WorkloadSpec
from .common import (
    add_engine_flags, add_served_model_name, add_tool_call_parser, engine_args, resolve_values, run_simulation,
    served_model_names, write_json,
)
from .openai.limits import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_TIMEOUT_KEEP_ALIVE_S
from .options import ConfigError, add_dataclass_flags, given

DEFAULT_MAX_WAITING = 1024
API_KEY_ENV_VARS = ("BATCHSERVE_API_KEY", "VLLM_API_KEY")
"""Read when --api-key is not given; vLLM's name too, so a deployment moved over from vLLM stays protected."""
# A short workload by default: the bench runs against real models on whatever machine is at hand.
BENCH_DEFAULTS = {"num_requests": 100, "input_len": "256", "output_len": "64"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `serve` and `bench` (whose one subcommand is `serve`)."""
    _serve_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks of a running server",
                           description="Benchmarks against a running server.")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    _bench_serve_parser(bench_sub)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="POST /v1/completions and /v1/chat/completions (streaming or not), /tokenize and /detokenize; "
        "GET /v1/models[/ID], /health, /ping, /version and /metrics (Prometheus). Every scheduler field is a flag "
        "of the same name.",
    )
    add_engine_flags(p)
    add_served_model_name(p)
    add_tool_call_parser(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING,
                   help="waiting sequences beyond which new requests get 429 with Retry-After "
                   f"(default: {DEFAULT_MAX_WAITING})")
    p.add_argument("--scheduler", choices=sorted(SCHEDULER_PRESETS), default="sarathi",
                   help="scheduler preset (default: sarathi: chunked prefill, decodes first, flat ITL)")
    p.add_argument("--seed", type=int, default=0, help="seed of requests that give none")
    p.add_argument("--skip-tokenizer-init", action="store_true",
                   help="load no tokenizer (e.g. random-weight benchmark models): prompts must be token ids")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (info logs every request)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health, /ping, "
                   f"/metrics and /version (default: ${API_KEY_ENV_VARS[0]}, else ${API_KEY_ENV_VARS[1]}, else none)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="larger request bodies get 413 before they are read (default: 16 MiB)")
    p.add_argument("--timeout-keep-alive", type=float, default=DEFAULT_TIMEOUT_KEEP_ALIVE_S,
                   help="seconds an idle connection is kept open between requests "
                   f"(default: {DEFAULT_TIMEOUT_KEEP_ALIVE_S:g})")
    p.add_argument("--timeout-header", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                   help="seconds a connection gets to send a request's headers before it is closed; guards against "
                   f"idle and slow (slowloris) clients (default: {DEFAULT_HEADER_TIMEOUT_S:g})")
    add_dataclass_flags(p, SchedulerConfig, "scheduler (defaults come from --scheduler)")
    add_dataclass_flags(p, CacheConfig, "KV cache", skip=("num_blocks",))
    p.set_defaults(func=cmd_serve)


def resolve_api_key(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """--api-key, else the first non-empty of `API_KEY_ENV_VARS`, else None (no key required)."""
    if flag == "":
        raise ConfigError("--api-key must be non-empty")
    return flag or next((environ[v] for v in API_KEY_ENV_VARS if environ.get(v)), None)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..engine.llm_engine import LLMEngine
    from .openai.api_server import build_app
    from .openai.connections import header_deadline_protocol

    if args.max_waiting < 1:
        raise ConfigError(f"--max-waiting must be >= 1, got {args.max_waiting}")
    for flag in ("max_request_bytes", "timeout_keep_alive", "timeout_header"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    api_key = resolve_api_key(args.api_key, os.environ)
    llm = LLMEngine(args.model, **engine_args(args), scheduler=args.scheduler, seed=args.seed,
                    skip_tokenizer_init=args.skip_tokenizer_init, **given(args, SchedulerConfig),
                    **given(args, CacheConfig))
    names = served_model_names(args)
    app = build_app(llm, names, max_waiting=args.max_waiting, api_key=api_key,
                    max_request_bytes=args.max_request_bytes, tool_call_parser=args.tool_call_parser)
    print(f"serving {names[0]!r} on http://{args.host}:{args.port}/v1 (policy={llm.scheduler.config.policy}, "
          f"max_num_batched_tokens={llm.scheduler.config.max_num_batched_tokens}, max_waiting={args.max_waiting}, "
          f"api key {'required' if api_key else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                http=header_deadline_protocol(args.timeout_header), timeout_keep_alive=args.timeout_keep_alive)
    return 0


def _bench_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="load-test a running OpenAI-compatible server",
        description="Send a synthetic workload (open loop, at --rate) to /v1/completions and report TTFT, TPOT, "
        "ITL and E2E percentiles, throughput and goodput; with --simulate, the simulator's prediction beside it.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (without /v1)")
    p.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    p.add_argument("--max-concurrency", type=int, help="cap on requests in flight (default: none)")
    p.add_argument("--slo", help="latency targets for goodput, e.g. ttft=2s,tpot=100ms")
    p.add_argument("--simulate", metavar="HARDWARE", help="also simulate the workload on this hardware")
    p.add_argument("--sim-model", help="model shape for --simulate: a catalog name or a HF config.json")
    p.add_argument("--json", metavar="FILE", help="write the workload and the metrics as JSON")
    p.add_argument("--per-request", metavar="JSONL", help="write one record per request")
    add_dataclass_flags(p, WorkloadSpec, "workload (defaults: " + ", ".join(f"{k}={v}" for k, v in
                        BENCH_DEFAULTS.items()) + ")", skip=("vocab_size",))
    p.set_defaults(func=cmd_bench_serve)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    import httpx

    from .openai.bench_client import format_comparison, model_card, run_load

    if args.simulate and not args.sim_model:
        raise ConfigError("--simulate needs --sim-model, the model shape to simulate (e.g. qwen2.5-0.5b)")
    slo = SLO.parse(args.slo) if args.slo else None
    values = {**BENCH_DEFAULTS, **given(args, WorkloadSpec)}

    async def card() -> dict:
        async with httpx.AsyncClient(timeout=30) as client:
            return await model_card(client, args.url.rstrip("/"))

    try:
        info = asyncio.run(card())
    except httpx.HTTPError as err:
        raise ConfigError(f"cannot reach {args.url}: {err}") from None
    if "vocab_size" not in info:
        raise ConfigError(f"{args.url}/v1/models gives no vocab_size, so token-id prompts cannot be drawn")
    spec = WorkloadSpec(**values, vocab_size=info["vocab_size"])
    result = asyncio.run(run_load(args.url, spec, model=args.model or info["id"], max_concurrency=args.max_concurrency))
    failed = sum(result.failures.values())
    if not result.records:
        raise ConfigError(f"all {failed} requests failed; first: {result.first_error}")
    measured = summarize(result.records, slo=slo)
    print(format_table(measured, title="Serving Benchmark Result"))
    if failed:
        print(f"failed requests: {failed} ({dict(result.failures)}); first: {result.first_error}")
    out = {"url": args.url, "model": info["id"], "workload": spec.to_dict(), "metrics": measured,
           "num_failed": failed, "failures": dict(result.failures)}
    if args.simulate:
        run = resolve_values({**values, "model": args.sim_model, "hardware": args.simulate, "track_token_times": True,
                              **({"slo": args.slo} if args.slo else {})})
        _, simulated, _ = run_simulation(run, quiet=True)
        print(format_comparison(measured, simulated, args.simulate))
        out["simulated"] = {"config": run.config(), "metrics": simulated}
    if args.json:
        write_json(args.json, out)
    if args.per_request:
        write_per_request(result.records, args.per_request)
    return 0

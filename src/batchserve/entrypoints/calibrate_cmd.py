"""Flags of `calibrate` and `validate`; torch is imported only when one of them runs."""

from __future__ import annotations

import argparse

from .common import add_engine_flags, add_report_flag, add_simulation_flags
from .lora_options import add_lora_flags


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="measure this device with a real model; write a hardware profile for the simulator",
        description="Run a short grid of real steps (prompt chunks, decode batches, mixed steps), fit the cost "
        "model's efficiency factors and overheads, and write a hardware profile JSON that simulate, plan, "
        "validate and run --estimate accept wherever a hardware name is accepted.",
    )
    add_engine_flags(p)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget per step (default: 2048)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="most requests per step (default: 256)")
    p.add_argument("-o", "--output", required=True, metavar="JSON", help="where to write the hardware profile")
    p.add_argument("--name", default=None, help="profile name (default: calibrated-<device type>)")
    p.add_argument("--observations", metavar="JSONL", help="also write every measured step")
    p.add_argument("--max-context", type=int, default=2048,
                   help="longest context the grid measures (default: 2048; less is quicker for short-context workloads)")
    p.add_argument("--grid-passes", type=int, default=None,
                   help="measure the step grid this many times, one whole pass after another, and fit each point's "
                        "median (default: as many as fit in 60 s, at least 3 and at most 15: a drifting shared machine "
                        "biases a single pass's points against each other)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_lora_flags(p)  # with LoRA on, adapter steps (under --lora-modules, else random ones) fit the LoRA terms
    p.set_defaults(func=_run("calibrate", "cmd_calibrate"))

    p = sub.add_parser(
        "validate", help="run a workload on the real engine and the simulator; compare latency and throughput",
        description="Replay one workload (synthetic flags as in `simulate`, or --workload TRACE) through the real "
        "engine and through the simulator with a calibrated --hardware profile, with the same scheduler and KV "
        "cache size, and print measured vs predicted throughput, TTFT, TPOT and E2E with each error.",
    )
    add_engine_flags(p)
    add_simulation_flags(p, skip=("model", "tp", "pp", "replicas", "router", "weight_dtype", "kv_cache_dtype",
                                  "gpu_memory_utilization", "track_token_times", "quantization", "quantization_group_size",
                                  "quantize_lm_head", "num_blocks", "balance_ratio", "balance_slack_tokens", "speculative_config"))
    p.add_argument("--json", metavar="FILE", help="write measured, predicted and error of each metric as JSON")
    p.add_argument("--plot", metavar="PNG", help="write measured and predicted latency CDFs")
    add_report_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run("validate", "cmd_validate"))


def _run(module: str, name: str):
    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        return getattr(import_module(f"{__package__}.{module}"), name)(args)

    return run

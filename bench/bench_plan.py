"""Planner speed: `batchserve plan` for Llama-3.1-70B over 3 hardware types, TP 1/2/4/8, PP 1/2, bf16 and fp8,
3 chunk sizes, up to 16 GPUs, with a capacity search per evaluated config; target: under 2 minutes on 2 cores.

    python bench/bench_plan.py                      # cold cache (a fresh temporary directory)
    python bench/bench_plan.py --num-requests 500   # shorter simulations

Prints the plan, the number of simulations, configs evaluated and skipped by the bound, and wall time;
then reruns with the same cache at another rate to show what the cache saves.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time

from batchserve.entrypoints.cli import main as cli


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def run(cache: str, rate: float, num_requests: int, workers: int) -> float:
    args = ["plan", "--model", "llama-3.1-70b", "--hardware", "h100-sxm,a100-80gb,mi300x", "--tp", "1,2,4,8",
            "--pp", "1,2", "--weight-dtype", "bf16,fp8", "--max-num-batched-tokens", "512,2048,8192",
            "--max-gpus", "16", "--rate", str(rate), "--slo", "ttft_p90=2s,tpot_p90=100ms",
            "--price", "h100-sxm=4.0,a100-80gb=2.2,mi300x=3.5", "--num-requests", str(num_requests),
            "--workers", str(workers), "--cache-dir", cache, "-q"]
    t0 = time.perf_counter()
    cli(args)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    print(f"{datetime.date.today()}, nproc {os.cpu_count()}, {cpu_model()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache, args.rate, args.num_requests, args.workers)
        print(f"cold cache: {cold:.1f} s wall\n")
        warm = run(cache, args.rate * 1.2, args.num_requests, args.workers)
        print(f"same cache, rate x1.2: {warm:.1f} s wall")


if __name__ == "__main__":
    main()

"""Paged attention backends op by op: one layer's decode step, torch (gather + SDPA) vs in place (flex, cpp).

Each case is a pure decode step of `batch` rows with `context` cached keys each, their blocks
shuffled through the pool as a long-running server leaves them. Times are the median of
--reps calls after a warm-up (flex compiles on its first call, cpp builds once per machine).
The ratio torch / backend is the speed-up of an in-place backend, measured in the same run.

    python bench/bench_attention.py --device cpu --threads 2
    python bench/bench_attention.py --backends cpp --dtype bfloat16 --batch 1 --batch 64
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch

from batchserve.models import AttentionConfig, AttentionMetadata, PagedAttention

# SmolLM2-135M's attention: 9 query heads over 3 KV heads of 64.
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 16


def time_backend(backend: str, batch: int, context: int, dtype: torch.dtype, device: str, reps: int,
                 seed: int = 0) -> float:
    """Median seconds of one decode step through PagedAttention.forward, after a first call (compiles, builds)."""
    blocks_per_row = -(-(context + 1) // BLOCK)
    num_blocks = batch * blocks_per_row
    pool = list(range(num_blocks))
    random.Random(seed).shuffle(pool)
    tables = [pool[i * blocks_per_row:(i + 1) * blocks_per_row] for i in range(batch)]
    kv_cache = tuple(torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, dtype=dtype, device=device) for _ in range(2))
    q = torch.randn(batch, HEADS, HEAD_DIM, dtype=dtype, device=device)
    k, v = (torch.randn(batch, KV_HEADS, HEAD_DIM, dtype=dtype, device=device) for _ in range(2))
    attn = PagedAttention(HEADS, KV_HEADS, HEAD_DIM)
    config = AttentionConfig(backend=backend)

    def step() -> float:
        # a fresh metadata each call: the per-step plan (gather indices or block mask) is part of the cost
        _, meta = AttentionMetadata.of_rows(tables, [context] * batch, [1] * batch, BLOCK, device, config)
        start = time.perf_counter()
        attn.forward(q, k, v, kv_cache, meta, HEAD_DIM ** -0.5)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()
    return statistics.median(step() for _ in range(reps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, action="append", help="default 1, 8, 64")
    p.add_argument("--context", type=int, action="append", help="default 128, 1024, 8192, 32768")
    p.add_argument("--max-keys", type=int, default=1 << 19, help="skip cases whose batch x context exceeds this")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--backends", nargs="+", choices=["flex", "cpp"], help="in-place backends to time against torch "
                   "(default: flex and, on a CPU, cpp)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    backends = args.backends or (["flex", "cpp"] if args.device == "cpu" else ["flex"])
    print(f"# {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, threads {args.threads}, "
          f"load {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {args.device} {args.dtype}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'batch':>5} {'context':>7} {'torch ms':>9}" + "".join(f" {b + ' ms':>8} {'torch/' + b:>10}" for b in backends))
    for batch in args.batch or [1, 8, 64]:
        for context in args.context or [128, 1024, 8192, 32768]:
            if batch * context > args.max_keys:
                continue
            ref = time_backend("torch", batch, context, dtype, args.device, args.reps)
            row = f"{batch:>5} {context:>7} {ref * 1e3:>9.3f}"
            for backend in backends:
                t = time_backend(backend, batch, context, dtype, args.device, args.reps)
                row += f" {t * 1e3:>8.3f} {ref / t:>10.2f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()

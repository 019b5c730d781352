"""MoE throughput: batchserve against transformers on a random-weight Mixtral shape sized for 2 CPU cores.

Shape: Mixtral layout, hidden 1024, 8 layers, 16 heads / 4 KV heads, 16
experts of width 1024, top-2, vocab 32000 (489M parameters, ~75M active per
token; bench_engine's "mixtral-small"). Workload: bench_engine's mixed one
(prompts 32..512, outputs 16..256, seed 0). Every run measures the matmul limit
(large square products, plain and oneDNN-packed) and the workload's
active-parameter FLOPs (each token through its top-2 experts only), then either

- (--gemm-table) expert GEMM efficiency by tokens per expert: one expert's
  gate/up and down at m = 1..256 rows with torch's linear, torch._grouped_mm,
  oneDNN packed fp32 (the engine's) and bf16, int8 weight-only, and one MoE layer's grouped
  dispatch over all 16 experts by step tokens, as GFLOP/s and as a share of
  the fp32 packed limit; or
- batchserve (fp32 packed; optionally unpacked, bf16, int8, and with decode
  batches sized by --target-tokens-per-expert) and transformers'
  static-batching generate at each --baseline-batch (its grouped_mm experts).

    python bench/bench_moe.py --num-requests 64 --bf16     # ~8 min on 2 idle cores
    python bench/bench_moe.py --gemm-table                 # the expert GEMM tables, ~1 min

The simulator's fidelity on this shape (calibrate, then validate): bench_fidelity.py --shape mixtral-small.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import torch.nn.functional as F
import transformers
from bench_engine import SHAPES, TOKEN_BUDGET, run_ours, run_transformers, workload, workload_flops

from batchserve.calibration.device import matmul_flops
from batchserve.config import QuantizationConfig
from batchserve.models.linear import PackedLinear
from batchserve.models.moe import Experts
from batchserve.models.quantization import Int8Linear

SHAPE = {**SHAPES["mixtral-small"][2], "max_position_embeddings": 2048}
EXPERT_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_TOKENS = (8, 16, 32, 64, 128, 256, 1024)
KV_CACHE = "1GiB"  # holds the 64-request workload at once (16 KiB per token)


def _best_seconds(fn, x: torch.Tensor, repeat: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeat):
            fn(x)
        best = min(best, (time.perf_counter() - t) / repeat)
    return best


def expert_kernels(hidden: int, width: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """One expert's gated MLP (gate/up, SiLU, down) as each candidate kernel runs it on m routed rows."""
    gate_up, down = torch.randn(2 * width, hidden) / hidden ** 0.5, torch.randn(hidden, width) / width ** 0.5

    def mlp(up_fn, down_fn):
        def run(x):
            g, u = up_fn(x).chunk(2, dim=-1)
            return down_fn(F.silu(g) * u)
        return run

    def grouped(w):  # transformers' experts path: one grouped GEMM over the sorted rows, here of one group
        stacked = w.t().unsqueeze(0)
        return lambda x: torch._grouped_mm(x, stacked, offs=torch.tensor([x.shape[0]], dtype=torch.int32))

    bf16 = mlp(PackedLinear(gate_up.bfloat16(), None), PackedLinear(down.bfloat16(), None))
    return {"torch linear fp32": mlp(lambda x: F.linear(x, gate_up), lambda a: F.linear(a, down)),
            "torch._grouped_mm fp32": mlp(grouped(gate_up), grouped(down)),
            "oneDNN packed fp32 (engine)": mlp(PackedLinear(gate_up, None), PackedLinear(down, None)),
            "oneDNN packed bf16 (dtype bfloat16)": lambda x: bf16(x.bfloat16()),
            "int8 weight-only (quantization int8)": mlp(Int8Linear(gate_up, None), Int8Linear(down, None))}


def expert_gemm_rates(hidden: int, width: int, rows: tuple[int, ...]) -> dict[str, list[float]]:
    """FLOP/s of one expert (gate/up then down) at each row count, per kernel."""
    return {name: [2 * m * 3 * hidden * width / _best_seconds(fn, torch.randn(m, hidden), max(3, 256 // m))
                   for m in rows]
            for name, fn in expert_kernels(hidden, width).items()}


def moe_layer_rates(cfg, step_tokens: tuple[int, ...]) -> dict[str, list[float]]:
    """FLOP/s of one MoE layer's routed experts (the engine's grouped dispatch, all experts) at a step of T
    tokens under uniform routing: what a decode step of T requests pays, host bookkeeping included."""
    e, k = cfg.num_local_experts, cfg.num_experts_per_tok
    rates: dict[str, list[float]] = {}
    variants = {"oneDNN packed float32": (torch.float32, Experts.prepack),
                "oneDNN packed bfloat16": (torch.bfloat16, Experts.prepack),
                "int8 weight-only": (torch.float32, partial(Experts.quantize, config=QuantizationConfig("int8")))}
    for name, (dtype, finish) in variants.items():
        experts = Experts(e, cfg.hidden_size, cfg.intermediate_size, dtype, "cpu")
        torch.nn.init.normal_(experts.gate_up_proj, std=0.02)
        torch.nn.init.normal_(experts.down_proj, std=0.02)
        finish(experts)
        rates[f"Experts.forward, {name}"] = row = []
        for t in step_tokens:
            ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)])
            weights = torch.full((t, k), 1 / k, dtype=dtype)
            seconds = _best_seconds(partial(experts, topk_weights=weights, topk_ids=ids),
                                    torch.randn(t, cfg.hidden_size, dtype=dtype),
                                    max(2, 64 // t))
            row.append(2 * t * k * 3 * cfg.hidden_size * cfg.intermediate_size / seconds)
    return rates


def print_gemm_tables(cfg, packed_peak: float) -> None:
    """The issue's table: expert GEMM efficiency by tokens per expert, per kernel, then per MoE layer step."""
    def table(title: str, head: str, cols, rates: dict[str, list[float]]) -> None:
        print(f"\n{title}\n| kernel | " + " | ".join(f"{head}={c}" for c in cols) + " |")
        print("| --- |" + " --- |" * len(cols))
        for name, row in rates.items():
            print(f"| {name} | " + " | ".join(f"{r / 1e9:.1f} GFLOP/s ({r / packed_peak:.0%})" for r in row) + " |",
                  flush=True)

    table("expert GEMM (gate/up + down of one expert) by tokens routed to it (m); share of the fp32 packed limit:",
          "m", EXPERT_ROWS, expert_gemm_rates(cfg.hidden_size, cfg.intermediate_size, EXPERT_ROWS))
    e, k = cfg.num_local_experts, cfg.num_experts_per_tok
    table(f"one MoE layer's experts ({e} experts, top-{k}, uniform routing) by step tokens T "
          f"(tokens per expert = T*{k}/{e}):", "T", STEP_TOKENS, moe_layer_rates(cfg, STEP_TOKENS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--baseline-batch", type=int, action="append", help="transformers static batch sizes")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prepack-off", action="store_true", help="also run batchserve without weight prepacking")
    parser.add_argument("--bf16", action="store_true",
                        help="also run batchserve in bfloat16 (half the expert weight bytes; transformers stays fp32)")
    parser.add_argument("--int8", action="store_true", help="also run batchserve with int8 weights (experts included)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="batchserve's max_num_seqs")
    parser.add_argument("--target-tokens-per-expert", type=int, default=0,
                        help="also run batchserve with decode batches sized for this many rows per expert")
    parser.add_argument("--gemm-table", action="store_true", help="print the expert GEMM tables instead of the end-to-end runs (a minute)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = transformers.MixtralConfig(**SHAPE)
    torch.manual_seed(0)
    hf = transformers.MixtralForCausalLM(cfg).eval()
    reqs = workload(args.num_requests, cfg.vocab_size)
    flops = workload_flops(cfg, reqs)
    cpu = torch.device("cpu")
    peak, packed_peak = matmul_flops(cpu, torch.float32), matmul_flops(cpu, torch.float32, packed=True)
    out_tokens = sum(out for _, out in reqs)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
          f"threads {args.threads}, cpu {platform.processor() or 'see lscpu'}, load {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: Mixtral shape {SHAPE}, {sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M params, float32; "
          f"{args.num_requests} requests, {out_tokens} output tokens, {flops / 1e12:.2f} TFLOP of active work")
    print(f"matmul limit {peak / 1e9:.0f} GFLOP/s (oneDNN packed {packed_peak / 1e9:.0f}) -> "
          f"at best {flops / packed_peak:.1f} s")

    if args.gemm_table:  # its own run: the end-to-end rows fit ~8 idle minutes without it
        print_gemm_tables(cfg, packed_peak)
        return

    def row(name: str, wall: float) -> str:
        return (f"| {name} | {wall:.1f} s | {out_tokens / wall:.1f} | {flops / wall / packed_peak:.1%} |")

    rows, walls, static = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        del hf  # one model in memory at a time: ~2 GB each in float32
        gc.collect()
        plain = {"dtype": "float32", "prepack": True}
        runs = ([plain] + [{**plain, "prepack": False}] * args.prepack_off + [{**plain, "dtype": "bfloat16"}] * args.bf16
                + [{**plain, "quantization": "int8"}] * args.int8
                + [{**plain, "target_tokens_per_expert": args.target_tokens_per_expert}] * bool(args.target_tokens_per_expert))
        for run in runs:
            wall, llm = run_ours(tmp, reqs=reqs, kv_cache_memory=KV_CACHE, max_num_seqs=min(args.max_num_seqs, TOKEN_BUDGET),
                                 **run)
            name = f"batchserve {', '.join(f'{k} {v}' for k, v in run.items())}, max_num_seqs {llm.scheduler.config.max_num_seqs}"
            walls[name] = wall
            rows.append(row(name, wall))
            print(rows[-1], flush=True)
            del llm
            gc.collect()
        hf = transformers.MixtralForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        for bsz in args.baseline_batch or [max(1, args.num_requests // 2), args.num_requests]:
            static[bsz] = run_transformers(hf, reqs, bsz)
            rows.append(row(f"transformers static batch {bsz} ({hf.config._experts_implementation})", static[bsz]))
            print(rows[-1], flush=True)
    best = min(static, key=static.get)
    print(f"\nload after the runs {os.getloadavg()[0]:.1f}")
    print("| run | wall | output tok/s | share of the packed matmul limit (active params) |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    for name, wall in walls.items():
        print(f"{name} is {static[best] / wall:.2f}x as fast as transformers' best static batch ({best})")


if __name__ == "__main__":
    main()

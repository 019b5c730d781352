"""Compiled batch-1 decode of the real SmolLM2 through dynamo vs through DirectCall, in one process.

Two compiled engines of the same weights: one calls its decode graphs through dynamo on every step (guards and the
frame hook; DirectCall's cache lookup switched off), the other runs dynamo's transformed code directly
(models/compiled_decode.DirectCall, the default). Rounds alternate their order; each round decodes 128 tokens
after a 128-token prompt (bench_quant.decode_rate), or with --num-requests N runs bench_engine's mixed workload of
N requests (bench_quant.mixed_rate: output tok/s; steps of several rows run the graph of more rows).

    python bench/direct_call_ab.py --dtype bfloat16 --rounds 10 [--num-requests 64]
    python bench/direct_call_ab.py --device cuda --shape qwen0.5b --rounds 6     # random weights of that shape
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch

from batchserve.engine.llm_engine import LLMEngine
from batchserve.models import compiled_decode

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import SHAPES
from bench_fidelity import build_model
from bench_quant import decode_rate, mixed_rate, smollm2_path


def engine(model: str, device: str, dtype: str, direct: bool) -> LLMEngine:
    """A compiled engine whose decode graphs skip dynamo after their first call (direct) or never do."""
    lookup = compiled_decode.transformed_code
    if not direct:
        compiled_decode.transformed_code = lambda *args: None  # no entry found: every call goes through dynamo
    try:
        e = LLMEngine(model, device=device, skip_tokenizer_init=True, kv_cache_memory="512MiB", dtype=dtype,
                      enforce_eager=False, max_num_batched_tokens=2048)
    finally:
        compiled_decode.transformed_code = lookup
    graphs = e.model.compiled_decode  # off a CPU there is no compiled head (its weights are not row-major)
    assert all(g.direct == direct for g in (graphs.one_row, graphs.fn, graphs.head) if g is not None)
    return e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-requests", type=int, default=0, help="the mixed workload's requests; 0: batch 1")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight model of this shape, not SmolLM2")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory() if args.shape else None  # removed as the process ends
    if tmp is not None:
        build_model(args.shape, getattr(torch, args.dtype), tmp.name)
    model = tmp.name if tmp is not None else smollm2_path()
    engines = {"dynamo": engine(model, args.device, args.dtype, False),
               "direct": engine(model, args.device, args.dtype, True)}
    for e in engines.values():
        decode_rate(e, 128, 8)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for i in range(args.rounds):
        for name in list(engines)[:: 1 if i % 2 == 0 else -1]:
            e = engines[name]
            rates[name].append(mixed_rate(e, e.model_config.vocab_size, args.num_requests) if args.num_requests
                               else decode_rate(e, 128, 128))
    what = f"{args.num_requests}-request mixed output tok/s" if args.num_requests else "batch-1 decode tok/s"
    print(f"nproc {os.cpu_count()}, torch {torch.__version__}, {args.device}, {args.shape or 'SmolLM2'}, "
          f"{args.dtype}, {what}")
    for name, r in rates.items():
        print(f"{name}: median {statistics.median(r):.1f} ({', '.join(f'{x:.1f}' for x in r)})")
    ratios = [b / a for a, b in zip(rates["dynamo"], rates["direct"])]
    print(f"direct / dynamo per round: median {statistics.median(ratios):.3f} "
          f"({', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()

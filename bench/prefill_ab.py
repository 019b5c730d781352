"""The cpp backend's in-place prompt-chunk kernel against gather + SDPA on whole jobs, alternating in one process.

Each round runs bench_estimate's real-model job shapes (chat under a shared system
prompt, extraction questions over one shared document, long generations) and
bench_engine's mixed workload ("mixed": fresh random-token prompts of 32-512
tokens, 16-256 output tokens, EOS ignored) on a fresh engine twice: prompt chunks through batchserve::paged_prefill, then through
the torch backend's gather + SDPA (decodes stay on the cpp kernel in both). Wall
time from the loaded engine to the last result written, median over --rounds.

    python bench/prefill_ab.py --model <SmolLM2 gguf> --dtype bfloat16 --num-requests 160
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
from bench_engine import workload
from bench_estimate import chat_shapes, completion
from bench_run import cpu_model

from batchserve.engine.llm_engine import LLMEngine
from batchserve.jobs.engine_backend import EngineBackend, local_job
from batchserve.jobs.runner import JobConfig
from batchserve.jobs.setup import RunSetup
from batchserve.models import attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--num-requests", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shapes", nargs="*", default=["chat-shared-system", "shared-prefix-extraction", "mixed"])
    args = parser.parse_args()
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
          f"cpu {cpu_model()}, torch {torch.__version__}, {args.dtype}", flush=True)
    setup = RunSetup(model=args.model, dtype=args.dtype, device="cpu", attention_backend="cpp",
                     max_num_batched_tokens=512, max_num_seqs=64)
    in_place = attention.prefill_in_place
    shapes = chat_shapes(args.num_requests, random.Random(0))
    if "mixed" in args.shapes:
        vocab = LLMEngine(setup.model, **setup.engine_args()).model_config.vocab_size
        shapes["mixed"] = [completion(f"m{i}", prompt, max_tokens=out, ignore_eos=True)
                           for i, (prompt, out) in enumerate(workload(min(args.num_requests, 64), vocab))]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            inp = Path(tmp) / f"{name}.jsonl"
            inp.write_text("".join(json.dumps(r) + "\n" for r in shapes[name]))
            walls: dict[str, list[float]] = {"in place": [], "gather + SDPA": []}
            for r in range(args.rounds):
                for variant, times in walls.items():
                    attention.prefill_in_place = in_place if variant == "in place" else (lambda head_dim: False)
                    out = Path(tmp) / f"{name}-{r}-{variant}.jsonl"
                    backend = EngineBackend(LLMEngine(setup.model, **setup.engine_args()))
                    t = time.perf_counter()
                    local_job(str(inp), str(out), setup.model, setup.engine_args(), JobConfig(), True,
                              lambda b=backend: b)
                    times.append(time.perf_counter() - t)
            attention.prefill_in_place = in_place
            a, b = (statistics.median(w) for w in walls.values())
            print(f"{name:<26} {len(shapes[name])} req: in place {a:6.2f} s, gather + SDPA {b:6.2f} s, "
                  f"{b / a:.2f}x  (rounds: {walls})", flush=True)


if __name__ == "__main__":
    main()

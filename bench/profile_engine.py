"""Where an engine step's time goes: torch profiler over decode-heavy steps of a random-weight or real model.

    python bench/profile_engine.py --shape qwen0.5b --dtype bfloat16 --device cuda --num-requests 256
    python bench/profile_engine.py --model SmolLM2-135M-Instruct.Q4_1.gguf --num-requests 1 --threads 2
    python bench/profile_engine.py --device cuda --dtype bfloat16 --decode-bucket-ratio 0   # one attention call

It profiles the torch attention backend (also on a CPU, whose default is the cpp kernel): each step's decodes
are attended in groups of similar key counts (AttentionConfig.decode_bucket_ratio), a gather and an SDPA call
per group and layer; the table's call counts show what that costs on the host.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
from bench_engine import SHAPES
from bench_fidelity import build_model
from torch.profiler import ProfilerActivity, profile

from batchserve.attention_layout import AttentionConfig
from batchserve.engine.llm_engine import LLMEngine
from batchserve.request import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    parser.add_argument("--model", help="a real model (HF directory or GGUF file) instead of a random-weight --shape")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--enforce-eager", default=True, action=argparse.BooleanOptionalAction)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps, after the prompts are in")
    parser.add_argument("--decode-bucket-ratio", type=float, default=AttentionConfig.decode_bucket_ratio,
                        help="AttentionConfig.decode_bucket_ratio; 0: every decode row in one padded call")
    args = parser.parse_args()
    rng = random.Random(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            build_model(args.shape, getattr(torch, args.dtype), tmp)
        llm = LLMEngine(args.model or tmp, device=args.device, dtype=args.dtype, kv_cache_memory="4GiB",
                        skip_tokenizer_init=True, enforce_eager=args.enforce_eager,
                        attention=AttentionConfig(decode_bucket_ratio=args.decode_bucket_ratio))
    vocab = llm.model_config.vocab_size
    for i in range(args.num_requests):
        llm.add_request(str(i), [rng.randrange(vocab) for _ in range(rng.randint(32, 512))],
                        SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    while llm.scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in llm.scheduler.running):
        llm.step()  # prompts in: what follows are decode steps of the whole batch
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            llm.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / args.steps
    print(f"{args.model or args.shape} {args.dtype} on {args.device}: {len(llm.scheduler.running)} decodes per step, "
          f"{wall * 1000:.1f} ms per step (profiled), decode_bucket_ratio {args.decode_bucket_ratio}")
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))
    if args.device == "cuda":
        print(prof.key_averages().table(sort_by=sort, row_limit=10, max_name_column_width=50))


if __name__ == "__main__":
    main()

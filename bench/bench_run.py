"""`batchserve run` on a shared-prefix job: prefix-aware order vs arrival order vs transformers static batching.

Workload (seed 0): P system prompts of L random token ids; each of N requests
is one of them (in random order) plus Q random question tokens, and generates
exactly O tokens (greedy, ignore_eos). The model has random weights in the
Qwen2.5-0.5B shape (see bench_engine.py) and a synthetic word-level tokenizer
(one word per id), so prompts go in as token ids. The KV cache is sized
(--kv-cache-tokens) below what all system prompts plus the running requests
need, as in real jobs with many documents: in arrival order LRU evicts a
prefix before its next use. All three are measured in one run.

    python bench/bench_run.py                       # 32 requests, 8 x 256-token prefixes, 16 out
    python bench/bench_run.py --num-requests 256 --prefix-len 400 --output-len 32   # the issue's shape
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import tempfile
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import transformers
from bench_engine import SHAPES, run_transformers
from tokenizers import Tokenizer, models

from batchserve.jobs.engine_backend import local_job
from batchserve.jobs.runner import JobConfig
from batchserve.model_config import from_hf_config, kv_bytes_per_block


def workload(args: argparse.Namespace, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(0)
    prefixes = [[rng.randrange(vocab) for _ in range(args.prefix_len)] for _ in range(args.num_prefixes)]
    return [(rng.choice(prefixes) + [rng.randrange(vocab) for _ in range(args.question_len)], args.output_len)
            for _ in range(args.num_requests)]


def save_model(hf: transformers.PreTrainedModel, vocab: int, path: Path) -> None:
    """Weights plus a word-level tokenizer whose word i is id i: the job's detokenizer has real work to do."""
    hf.save_pretrained(path)
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0")).save(str(path / "tokenizer.json"))


def run_job(path: Path, reqs, engine_args: dict, prefix_aware: bool, tmp: Path) -> dict:
    tmp.mkdir(exist_ok=True)
    inp, out = tmp / "in.jsonl", tmp / f"out-{prefix_aware}.jsonl"
    with open(inp, "w") as f:
        for i, (prompt, n) in enumerate(reqs):
            body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
            f.write(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
    s = local_job(str(inp), str(out), str(path), engine_args, JobConfig(prefix_aware=prefix_aware), quiet=True)
    assert s.num_ok == len(reqs) and s.output_tokens == sum(n for _, n in reqs)
    # wall_s: from the loaded model to the last result written (tokenizing, ordering, writing included)
    return {"wall": s.wall_s, "computed": s.computed_prompt_tokens, "hit": s.prefix_cache_hit_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--num-prefixes", type=int, default=8)
    parser.add_argument("--prefix-len", type=int, default=256)
    parser.add_argument("--question-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--kv-cache-tokens", type=int, default=1536, help="KV cache size in tokens")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--baseline-batch", type=int, default=16, help="transformers static batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2, help="runs of each order (best reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config_cls, model_cls, shape = SHAPES["qwen0.5b"]
    cfg = getattr(transformers, config_cls)(**shape, max_position_embeddings=2048)
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(cfg).eval()
    reqs = workload(args, cfg.vocab_size)
    prompt_tokens = sum(len(p) for p, _ in reqs)
    out_tokens = sum(n for _, n in reqs)
    dtype = getattr(torch, args.dtype)
    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, torch threads {args.threads}, "
          f"cpu {cpu_model()}, torch {torch.__version__}")
    print(f"Qwen2.5-0.5B shape, {args.dtype}, {args.num_requests} requests = {args.num_prefixes} prefixes x "
          f"{args.prefix_len} + {args.question_len} question tokens, {args.output_len} out; "
          f"{prompt_tokens} prompt + {out_tokens} output tokens; KV cache {args.kv_cache_tokens} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        save_model(hf, cfg.vocab_size, path)
        engine_args = dict(dtype=args.dtype, device="cpu", max_num_batched_tokens=2048, max_num_seqs=64,
                           kv_cache_memory=kv_bytes(path, dtype, args.kv_cache_tokens))
        # Interleaved repeats, best of each: a first run pays one-off kernel setup for every new batch shape.
        runs = [(aware, run_job(path, reqs, engine_args, aware, Path(tmp) / f"{i}-{aware}"))
                for i in range(args.repeats) for aware in (True, False)]
        results = {aware: min((r for a, r in runs if a == aware), key=lambda r: r["wall"]) for aware in (True, False)}
    static = run_transformers(hf.to(dtype), reqs, args.baseline_batch)
    total = prompt_tokens + out_tokens
    for name, r in (("prefix-aware order", results[True]), ("arrival order", results[False])):
        print(f"batchserve run, {name:18s}: {r['wall']:6.1f} s, {out_tokens / r['wall']:6.1f} output tok/s, "
              f"{total / r['wall']:7.1f} total tok/s, computed prompt tokens {r['computed']}, "
              f"prefix hit rate {r['hit']:.1%}")
    print("all runs (s): " + ", ".join(f"{'aware' if a else 'arrival'} {r['wall']:.1f}" for a, r in runs))
    print(f"transformers static batch {args.baseline_batch:3d}  : {static:6.1f} s, {out_tokens / static:6.1f} output "
          f"tok/s, {total / static:7.1f} total tok/s, computed prompt tokens {prompt_tokens} (no prefix cache)")
    aware, arrival = results[True]["wall"], results[False]["wall"]
    print(f"prefix-aware is {arrival / aware:.2f}x arrival order and {static / aware:.2f}x transformers")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def kv_bytes(path: Path, dtype: torch.dtype, tokens: int) -> int:
    """Bytes of a KV cache holding `tokens` tokens of this model."""
    config = from_hf_config(json.loads((path / "config.json").read_text()))
    return int(kv_bytes_per_block(config, 16, dtype.itemsize)) * (tokens // 16)


if __name__ == "__main__":
    main()

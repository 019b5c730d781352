"""Real-engine throughput against transformers, as a fraction of this CPU's matmul limit.

Workload (seed 0): N requests, prompt lengths uniform 32..512, output lengths
uniform 16..256 (exact, ignore_eos), random token ids. Models have random
weights: "small" (Llama-shaped, hidden 512, 8 layers, 8 heads / 2 KV heads,
intermediate 1408, vocab 32000, ~55M parameters) and "qwen0.5b" (the
Qwen2.5-0.5B shape). The limit is the workload's FLOPs (2 x linear params per
computed token, the LM head only for sampled tokens, plus attention) over the
matmul FLOP/s measured in the same run (large square products with torch.mm).
On CPU the square products are also timed with a oneDNN-packed weight (what
the engine's linear layers use, models/linear.py); the fraction of that, the
faster of the two on AMD EPYC, is printed beside the first.

    python bench/bench_engine.py --model small --dtype float32 --num-requests 64
    python bench/bench_engine.py --model qwen0.5b --dtype bfloat16 --baseline-batch 16
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import tempfile
import time

import torch
import transformers

from batchserve import SamplingParams
from batchserve.calibration.device import matmul_flops
from batchserve.entrypoints.llm import LLM
from batchserve.models.linear import prepack_supported

SHAPES = {
    "small": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                                       num_key_value_heads=2, intermediate_size=1408, vocab_size=32000)),
    "qwen0.5b": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                                          num_key_value_heads=2, intermediate_size=4864,
                                                          vocab_size=151936, tie_word_embeddings=True)),
    "llama3.2-1b": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                                             num_key_value_heads=8, intermediate_size=8192,
                                                             vocab_size=128256, tie_word_embeddings=True)),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def workload(num: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(32, 512))], rng.randint(16, 256)) for _ in range(num)]


def workload_flops(cfg, reqs: list[tuple[list[int], int]]) -> float:
    """FLOPs of the useful work: every computed token through the linear layers and attention, LM head per output."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q = cfg.num_attention_heads * (h // cfg.num_attention_heads)
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    linear_params = layers * (h * (q + 2 * kv) + q * h + 3 * h * inter)
    total = 0.0
    for prompt, out in reqs:
        computed = len(prompt) + out - 1  # the last sampled token is never fed back
        total += 2 * linear_params * computed
        total += 2 * h * cfg.vocab_size * out
        # attention: token at position p attends p + 1 keys (QK^T and PV), every layer
        total += layers * 4 * q * computed * (computed + 1) / 2
    return total


def run_ours(path: str, dtype: str, reqs, device: str = "cpu", prepack: bool = True) -> tuple[float, LLM]:
    llm = LLM(path, dtype=dtype, device=device, skip_tokenizer_init=True, kv_cache_memory="4GiB",
              max_num_batched_tokens=2048, weight_prepack=prepack)
    params = [SamplingParams(max_tokens=out, temperature=0, ignore_eos=True) for _, out in reqs]
    t = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params, use_tqdm=False)
    wall = time.perf_counter() - t
    assert [len(o.outputs[0].token_ids) for o in outs] == [out for _, out in reqs]
    return wall, llm


def run_transformers(model, reqs, batch_size: int, device: str = "cpu") -> float:
    """Static batching as users write it: sort by prompt length, left-pad, generate to the batch's longest output."""
    order = sorted(range(len(reqs)), key=lambda i: len(reqs[i][0]))
    t = time.perf_counter()
    for start in range(0, len(order), batch_size):
        chunk = [reqs[i] for i in order[start : start + batch_size]]
        width = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device=device)
        longest = max(out for _, out in chunk)
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                           min_new_tokens=longest, pad_token_id=0, eos_token_id=None)
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--baseline-batch", type=int, action="append", help="transformers batch sizes to try")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prepack", choices=["on", "off", "both"], default="on",
                        help="run batchserve with oneDNN-packed weights (the default), torch's linear, or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config_cls, model_cls, shape = SHAPES[args.model]
    cfg = getattr(transformers, config_cls)(**shape, max_position_embeddings=2048)
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(cfg).eval()
    reqs = workload(args.num_requests, cfg.vocab_size)
    flops = workload_flops(cfg, reqs)
    device = torch.device(args.device)
    peak = matmul_flops(device, dtype)
    packed_peak = matmul_flops(device, dtype, packed=True) if prepack_supported(dtype, device) else None
    out_tokens = sum(out for _, out in reqs)
    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, torch threads {args.threads}, "
          f"cpu {platform.processor() or 'see /proc/cpuinfo'}, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(f"model {args.model} ({sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M params), {args.dtype}, "
          f"{args.num_requests} requests, {out_tokens} output tokens, {flops / 1e12:.2f} TFLOP of useful work")
    print(f"matmul limit: {peak / 1e9:.0f} GFLOP/s -> at best {flops / peak:.1f} s"
          + (f"; oneDNN packed: {packed_peak / 1e9:.0f} GFLOP/s -> {flops / packed_peak:.1f} s" if packed_peak else ""))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        walls = []
        for prepack in {"on": [True], "off": [False], "both": [True, False]}[args.prepack]:
            wall, llm = run_ours(tmp, args.dtype, reqs, args.device, prepack)
            walls.append(wall)
            ex = llm.executor
            overhead = (wall - ex.model_s) / wall
            packed_share = f" ({flops / wall / packed_peak:5.1%} of the oneDNN limit)" if packed_peak else ""
            print(f"batchserve{'' if prepack else ' (weight_prepack=False)'}: {wall:6.1f} s, "
                  f"{out_tokens / wall:7.1f} output tok/s, {flops / wall / peak:5.1%} of limit{packed_share}; "
                  f"time outside forward + sampling (scheduling, input prep, detokenization): {overhead:.1%} "
                  f"(input prep alone {ex.prepare_s / wall:.1%})", flush=True)
            del llm, ex
    wall = walls[0]
    if len(walls) == 2:
        print(f"weight prepacking: {walls[1] / walls[0]:.2f}x faster than torch's default linear")
    if not args.no_baseline:
        hf = hf.to(device=args.device, dtype=dtype)
        for bsz in args.baseline_batch or [16, args.num_requests]:
            t = run_transformers(hf, reqs, bsz, args.device)
            print(f"transformers static batch {bsz:3d}: {t:6.1f} s, {out_tokens / t:7.1f} output tok/s, "
                  f"{flops / t / peak:5.1%} of limit; batchserve is {t / wall:.2f}x faster")


if __name__ == "__main__":
    main()

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

Baselines, same requests, greedy, dtype and threads: transformers' static
batching `generate` (sorted by prompt length, each batch run to its longest
output) and transformers' own continuous batching (`ContinuousBatchingManager`,
paged KV cache, SDPA attention over a block-diagonal mask, the implementation
it accepts on CPU; the same 2048-token step budget and a cache that holds the
whole workload). Neither gets oneDNN weight prepacking, so the summary pairs
batchserve with and without it against each: prepack off vs continuous
batching is engine against engine on the same kernels.

    python bench/bench_engine.py --model small --dtype float32 --num-requests 64
    python bench/bench_engine.py --model qwen0.5b --dtype bfloat16 --baseline-batch 16
    python bench/bench_engine.py --device cuda --model qwen0.5b --dtype bfloat16 --num-requests 256 \
        --enforce-eager both --attention-backend flex     # eager steps vs the captured decode ladder

`--enforce-eager off` runs the engine's compiled decode steps (`--no-enforce-eager`: on the torch backend one
graph for one row and one for more, called without dynamo; on the flex backend padded to a ladder of batch sizes,
CUDA graphs on CUDA); they compile as the engine starts, outside the timed run.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import random
import tempfile
import time
from typing import Any

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import transformers
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from batchserve import SamplingParams
from batchserve.attention_layout import ATTENTION_BACKENDS, AttentionConfig
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
    # bench_moe's MoE shape sized for 2 CPU cores: 16 experts of width 1024, top-2 (~490M params, ~75M active)
    "mixtral-small": ("MixtralConfig", "MixtralForCausalLM", {"hidden_size": 1024, "num_hidden_layers": 8,
                                                              "num_attention_heads": 16, "num_key_value_heads": 4,
                                                              "intermediate_size": 1024, "vocab_size": 32000,
                                                              "num_local_experts": 16, "num_experts_per_tok": 2}),
}
TOKEN_BUDGET = 2048  # tokens per engine step, for batchserve and transformers' continuous batching alike
MAX_SEQS = 256  # batchserve's default max_num_seqs, also given to transformers' continuous batching


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def workload(num: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(32, 512))], rng.randint(16, 256)) for _ in range(num)]


def workload_flops(cfg, reqs: list[tuple[list[int], int]]) -> float:
    """FLOPs of the useful work: every computed token through the linear layers (the active experts of an MoE
    layer) and attention, LM head per output."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q = cfg.num_attention_heads * (h // cfg.num_attention_heads)
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    # an MoE layer (Mixtral-style config) runs its router and each token's top-k experts, not all of them
    top_k, experts = getattr(cfg, "num_experts_per_tok", 1), getattr(cfg, "num_local_experts", 0)
    linear_params = layers * (h * (q + 2 * kv) + q * h + top_k * 3 * h * inter + h * experts)
    total = 0.0
    for prompt, out in reqs:
        computed = len(prompt) + out - 1  # the last sampled token is never fed back
        total += 2 * linear_params * computed
        total += 2 * h * cfg.vocab_size * out
        # attention: token at position p attends p + 1 keys (QK^T and PV), every layer
        total += layers * 4 * q * computed * (computed + 1) / 2
    return total


def run_ours(path: str, dtype: str, reqs, device: str = "cpu", prepack: bool = True,
             kv_cache_memory: str = "4GiB", **engine: Any) -> tuple[float, LLM]:
    """Wall time of one batchserve generate over the workload; `engine`: further LLMEngine arguments."""
    llm = LLM(path, dtype=dtype, device=device, skip_tokenizer_init=True, kv_cache_memory=kv_cache_memory,
              max_num_batched_tokens=TOKEN_BUDGET, weight_prepack=prepack, **engine)
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


def run_transformers_continuous(model, reqs) -> float:
    """transformers' continuous batching, each request with its own exact max_new_tokens and no EOS.

    `generate_batch` takes one max_new_tokens for all requests, so this drives its manager directly. The cache is
    sized to hold every request at once (no preemption). The clock starts once the manager is built and warmed up
    (CUDA graphs; nothing on CPU), as batchserve's starts after its engine is; the manager's thread still allocates
    its cache inside the timed run, milliseconds against seconds.
    """
    page = ContinuousBatchingConfig.page_size
    cb_config = ContinuousBatchingConfig(
        num_blocks=sum(-(-(len(p) + out) // page) for p, out in reqs), max_batch_tokens=TOKEN_BUDGET,
        max_requests_per_batch=MAX_SEQS, auto_switch_to_flash=False)
    model.set_attn_implementation("sdpa")
    gen_config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0)
    session = model.continuous_batching_context_manager(gen_config, continuous_batching_config=cb_config)
    with torch.inference_mode(), session as manager:  # the loop thread takes the caller's inference mode
        t = time.perf_counter()
        ids = [manager.add_request(p, max_new_tokens=out, eos_token_id=-1) for p, out in reqs]
        results = {}
        while len(results) < len(ids) and manager.is_running():
            if (res := manager.get_result(timeout=1)) is not None and res.is_finished():
                results[res.request_id] = res
        wall = time.perf_counter() - t
    lengths = [len(results[i].generated_tokens) if i in results else 0 for i in ids]
    assert lengths == [out for _, out in reqs], "transformers continuous batching lost or cut short requests"
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--baseline", choices=["static", "continuous", "both"], default="both",
                        help="transformers baselines: static batching generate, its continuous batching, or both")
    parser.add_argument("--baseline-batch", type=int, action="append", help="transformers static batch sizes to try")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prepack", choices=["on", "off", "both"], default="both",
                        help="run batchserve with oneDNN-packed weights, torch's linear (what the baselines run), "
                             "or both (the default, so the summary separates the kernel gain from the batching gain)")
    parser.add_argument("--async-scheduling", choices=["off", "on", "both"], default="off",
                        help="batchserve's async scheduling (the next step scheduled while one runs): off, on, or "
                             "both (an untimed warm-up run, then a row each and their ratio)")
    parser.add_argument("--enforce-eager", choices=["on", "off", "both"], default="on",
                        help="batchserve's decode steps: eager (on, the engine's default), compiled (off), or both")
    parser.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default=None,
                        help="batchserve's paged attention: a gather + SDPA (torch), FlexAttention in place (flex) or "
                             "the CPU kernel in place (cpp); default: the engine's for the device")
    parser.add_argument("--decode-bucket-ratio", type=float, nargs="+", default=[AttentionConfig.decode_bucket_ratio],
                        help="the torch backend's decode grouping (AttentionConfig.decode_bucket_ratio): rows share "
                             "a padded attention call while their keys are >= this fraction of its longest; 0: one "
                             "call for all of them; several values: a row each, in this run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # threads started later (transformers' batching loop) inherit it
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

    def rate(wall: float) -> str:
        """One row's wall time, throughput and fractions of the limits; every row prints the same fields."""
        packed_share = f" ({flops / wall / packed_peak:5.1%} of the oneDNN limit)" if packed_peak else ""
        return (f"{wall:6.1f} s, {out_tokens / wall:7.1f} output tok/s, {flops / wall / peak:5.1%} of limit"
                + packed_share)

    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, torch threads {args.threads}, "
          f"cpu {platform.processor() or 'see /proc/cpuinfo'}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(f"model {args.model} ({sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M params), {args.dtype}, "
          f"{args.num_requests} requests, {out_tokens} output tokens, {flops / 1e12:.2f} TFLOP of useful work")
    print(f"matmul limit: {peak / 1e9:.0f} GFLOP/s -> at best {flops / peak:.1f} s"
          + (f"; oneDNN packed: {packed_peak / 1e9:.0f} GFLOP/s -> {flops / packed_peak:.1f} s" if packed_peak else ""))
    ours: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        options = {"on": [True], "off": [False], "both": [True, False]}
        for prepack, eager, ratio in itertools.product(options[args.prepack], options[args.enforce_eager],
                                                       args.decode_bucket_ratio):
            # grouping ratios compared are the torch backend's knob: every row then runs a config of its own, whose
            # backend is torch unless told otherwise; none compared: the engine's default backend
            grouped = args.decode_bucket_ratio != [AttentionConfig.decode_bucket_ratio]
            attention = AttentionConfig(decode_bucket_ratio=ratio) if grouped else None
            engine = {"enforce_eager": eager, "attention_backend": args.attention_backend, "attention": attention}
            if args.async_scheduling == "both":  # the two rows share their kernels: the first would build them
                run_ours(tmp, args.dtype, reqs, args.device, prepack, **engine)
            for overlap in {"off": [False], "on": [True], "both": [False, True]}[args.async_scheduling]:
                wall, llm = run_ours(tmp, args.dtype, reqs, args.device, prepack, async_scheduling=overlap, **engine)
                name = (f"batchserve (prepack {'on' if prepack else 'off'}{'' if eager else ', compiled'}"
                        f"{'' if ratio == AttentionConfig.decode_bucket_ratio else f', decode_bucket_ratio {ratio}'}"
                        f"{', async scheduling' if overlap else ''})")
                ours[name] = wall
                ex = llm.executor
                print(f"{name}: {rate(wall)}; time outside forward + sampling (scheduling, input prep, "
                      f"detokenization): {(wall - ex.model_s) / wall:.1%} (input prep alone "
                      f"{ex.prepare_s / wall:.1%})", flush=True)
                del llm, ex
    if "batchserve (prepack off)" in ours and "batchserve (prepack on)" in ours:
        print(f"weight prepacking: {ours['batchserve (prepack off)'] / ours['batchserve (prepack on)']:.2f}x faster "
              "than torch's default linear")
    # each option against the same row without it, where both ran
    ratios = sorted(set(args.decode_bucket_ratio) - {AttentionConfig.decode_bucket_ratio})
    options_run = [("async scheduling", ", async scheduling"), ("compiled decode steps", ", compiled"),
                   *((f"decode_bucket_ratio {r}", f", decode_bucket_ratio {r}") for r in ratios)]
    for label, marker in options_run:
        for name in [n for n in ours if marker in n]:
            without = name.replace(marker, "")
            if without in ours:
                print(f"{label}: {ours[without] / ours[name]:.2f}x as fast as {without}")
    if args.no_baseline:
        return
    hf = hf.to(device=args.device, dtype=dtype)
    baselines: dict[str, float] = {}
    if args.baseline in ("static", "both"):
        static = {}
        for bsz in args.baseline_batch or [16, args.num_requests]:
            static[bsz] = run_transformers(hf, reqs, bsz, args.device)
            print(f"transformers static batch {bsz}: {rate(static[bsz])}", flush=True)
        best = min(static, key=static.get)
        baselines[f"transformers static (best, batch {best})"] = static[best]
    if args.baseline in ("continuous", "both"):
        wall = run_transformers_continuous(hf, reqs)
        print(f"transformers continuous batching (paged, sdpa): {rate(wall)}", flush=True)
        baselines["transformers continuous batching"] = wall
    print("summary (prepack off runs the baselines' linear kernels, so its ratios are the batching and engine gain "
          "alone; prepack on adds the oneDNN kernel gain):")
    for name, wall in ours.items():
        for base, base_wall in baselines.items():
            print(f"  {name} is {base_wall / wall:.2f}x as fast as {base}")


if __name__ == "__main__":
    main()

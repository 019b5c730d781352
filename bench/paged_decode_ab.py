"""The cpp attention backend's kernel against another revision of it, in one process, on real SmolLM2 decode steps.

The other revision's `paged_decode.cpp` (`git show REV:...`) is built under another op namespace beside the
working tree's, and both run on the same inputs, alternating:

- replay: one engine step's 30 decode-attention calls (one per layer), captured from `--rows` requests of
  `--context` prompt tokens each once all decode together, replayed in layer order, so every layer's K/V comes
  from memory as in a step (one call replayed alone runs from cache, and on random slots from cache misses:
  both misled this kernel's first AVX-512 version, bench/RESULTS.md session 29); the outputs must be the same bits;
- step (`--steps`): the engine's pure decode steps with each kernel in turn, two rounds each.

    python bench/paged_decode_ab.py --against 1b1171a --dtype bfloat16 --rows 64 --context 1000
    python bench/paged_decode_ab.py --against 1b1171a --dtype float32 --rows 64 --context 500 --steps
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
from bench_decode import default_model
from torch.utils import cpp_extension

from batchserve.engine.llm_engine import LLMEngine
from batchserve.models import attention
from batchserve.models import paged_decode as kernel
from batchserve.request import SamplingParams

SOURCE = "src/batchserve/models/paged_decode.cpp"


def load_revision(rev: str) -> object:
    """The kernel of git revision `rev`, built as the op batchserve_ab::paged_decode."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{rev}:{SOURCE}"], cwd=root, check=True, capture_output=True,
                          text=True).stdout
    text = text.replace("TORCH_LIBRARY_FRAGMENT(batchserve,", "TORCH_LIBRARY_FRAGMENT(batchserve_ab,")
    text = text.replace("TORCH_LIBRARY_IMPL(batchserve,", "TORCH_LIBRARY_IMPL(batchserve_ab,")
    path = Path(tempfile.mkdtemp()) / "paged_decode_ab.cpp"
    path.write_text(text)
    cpp_extension.load(f"batchserve_paged_decode_ab_{rev}_{kernel.isa_tag()}", [str(path)],
                       extra_cflags=kernel.COMPILE_FLAGS, extra_ldflags=["-fopenmp"], is_python_module=False)
    return torch.ops.batchserve_ab.paged_decode


def engine(dtype: str) -> LLMEngine:
    return LLMEngine(default_model(), dtype=dtype, kv_cache_memory="6GiB", skip_tokenizer_init=True,
                     enable_prefix_caching=False)


def add_requests(llm: LLMEngine, tag: str, rows: int, context: int, seed: int) -> None:
    """`rows` requests of `context` random prompt tokens, long enough to decode together once all prompts are in."""
    rng = random.Random(seed)
    for i in range(rows):
        llm.add_request(f"{tag}-{i}", [rng.randrange(1, 40000) for _ in range(context)],
                        SamplingParams(max_tokens=16 + rows * context // 1024, temperature=0, ignore_eos=True))


def all_decoding(outs: list, rows: int) -> bool:
    return len(outs) == rows and all(len(o.outputs[0].token_ids) > 3 for o in outs)


def replay(llm: LLMEngine, ops: dict[str, object], rows: int, context: int, repeats: int) -> dict[str, float]:
    """Median ms of one step's decode-attention calls, replayed in layer order, per kernel."""
    captured = []
    eager = attention.paged_decode

    def spy(q, k, v, slots, mask, scale):
        captured.append((q.clone(), k, v, slots.clone(), mask.view(slots.shape).clone(), scale))
        return eager(q, k, v, slots, mask, scale)

    attention.paged_decode = spy
    add_requests(llm, "replay", rows, context, 0)
    while llm.has_unfinished():
        captured.clear()
        if all_decoding(llm.step(), rows):
            break
    attention.paged_decode = eager
    calls = list(captured)
    first = {name: op(*calls[0]) for name, op in ops.items()}
    if not all(torch.equal(out, first["this tree"]) for out in first.values()):
        raise SystemExit("the two kernels' outputs differ")
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            t = time.perf_counter()
            for call in calls:
                op(*call)
            times[name].append(time.perf_counter() - t)
    while llm.has_unfinished():
        llm.step()
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def decode_steps(llm: LLMEngine, ops: dict[str, object], rows: int, context: int) -> dict[str, float]:
    """Median ms of the engine's pure decode steps with each kernel, two alternating rounds (mean of medians)."""
    eager = attention.paged_decode
    out: dict[str, list[float]] = {name: [] for name in ops}
    for round_ in range(2):
        for name in (list(ops) if round_ == 0 else list(ops)[::-1]):
            op = ops[name]
            attention.paged_decode = (
                lambda q, k, v, slots, mask, scale, op=op: op(q, k, v, slots, mask.view(slots.shape), scale))
            add_requests(llm, f"{name}-{round_}", rows, context, round_)
            steps = []
            while llm.has_unfinished():
                t = time.perf_counter()
                outs = llm.step()
                if all_decoding(outs, rows):
                    steps.append(time.perf_counter() - t)
            out[name].append(statistics.median(steps[2:]))
    attention.paged_decode = eager
    return {name: statistics.mean(v) * 1e3 for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="git revision of the other kernel")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", action="store_true", help="also time the engine's decode steps")
    args = parser.parse_args()
    kernel.load_kernel()
    ops = {"this tree": torch.ops.batchserve.paged_decode, args.against: load_revision(args.against)}
    llm = engine(args.dtype)
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, torch "
          f"{torch.__version__}, {args.dtype}, {args.rows} rows x {args.context} prompt tokens")
    for label, result in [("one step's decode attention, replayed", replay(llm, ops, args.rows, args.context,
                                                                          args.repeats))] + (
            [("engine decode step", decode_steps(llm, ops, args.rows, args.context))] if args.steps else []):
        this, other = result["this tree"], result[args.against]
        print(f"{label}: this tree {this:.1f} ms, {args.against} {other:.1f} ms, speedup {other / this:.2f}x")


if __name__ == "__main__":
    main()

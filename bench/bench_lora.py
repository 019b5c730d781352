"""Multi-LoRA throughput: many adapters in one batch vs the base model alone vs adapters one after another.

Workload (seed 0): N requests with random token-id prompts (lengths uniform
in --input-len) and --output-len output tokens each (exact, ignore_eos),
request i under adapter i mod A (interleaved: every step mixes all adapters
and each adapter's rows are split into several segments). Adapters are PEFT
LoRAs of rank R on q/k/v/o/gate/up/down with random weights, built with PEFT
on a random model of the chosen shape and saved with `save_pretrained`.

Three runs, same requests, greedy, prefix caching off (the runs share prompts,
and a cache hit in one would flatter the next):
- base: the base model alone, LoRA off;
- mixed: all N requests in one generate call, A adapters resident (max_loras=A);
- sequential: the same engine, one generate call per adapter (its N/A requests),
  as a server that serves one fine-tune at a time would.
Adapters are loaded (and slots filled) by a warm-up before timing. With
--simulate, the LoRA engine is then calibrated in the same run (`calibrate`'s
grid plus its LoRA steps under these adapters) and the simulator predicts the
three runs' wall times on the same requests: simulated vs measured, each
run's wall and throughput error, and whether the throughput is within the
10% fidelity bound (the grid runs with the prefix cache on, as `calibrate`
always does; the measured and simulated runs keep it off). With
--repeats N the three runs alternate N times and each reports its median
wall time (and all of them): on a shared machine, load that comes and goes
would otherwise land on one configuration and not the others.

    python bench/bench_lora.py --shape qwen0.5b --num-requests 64 --num-adapters 8 --rank 16 \\
        --json bench/results/cpu-lora-qwen0.5b.json
    python bench/bench_lora.py --shape qwen0.5b --num-requests 64 --num-adapters 8 --rank 16 --simulate \\
        --json bench/results/cpu-lora-qwen0.5b-sim.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import peft

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import transformers
from bench_engine import SHAPES  # the same model shapes as the engine benchmark

from batchserve import LoRARequest, SamplingParams
from batchserve.calibration.steps import calibrate
from batchserve.calibration.validate import sim_setup
from batchserve.entrypoints.llm import LLM
from batchserve.request import Request
from batchserve.sim.simulate import simulate

THROUGHPUT_BOUND = 0.10  # the fidelity bound: predicted throughput within 10% of measured
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def build(shape: str, num_adapters: int, rank: int, root: Path) -> tuple[Path, list[LoRARequest]]:
    """A random base model and num_adapters random PEFT adapters, saved under root."""
    config_cls, model_cls, kwargs = SHAPES[shape]
    torch.manual_seed(0)
    base = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs, max_position_embeddings=2048))
    base.save_pretrained(root / "base")
    adapters = []
    for i in range(1, num_adapters + 1):
        model = peft.get_peft_model(base, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, p.shape[1] ** -0.5)
        model.save_pretrained(root / f"lora{i}")
        base = model.unload()  # the bare base model again, for the next adapter
        adapters.append(LoRARequest(f"lora{i}", i, str(root / f"lora{i}")))
    return root / "base", adapters


def timed(llm: LLM, batches: list[tuple[list[list[int]], LoRARequest | list[LoRARequest] | None]],
          params: SamplingParams) -> float:
    start = time.perf_counter()
    for prompts, lora in batches:
        llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    return time.perf_counter() - start


def predicted_walls(llm: LLM, shape: str, prompts: list[list[int]], loras: list[LoRARequest], output_len: int,
                    profile: Path) -> dict[str, float]:
    """The simulator's wall time of each run on a profile calibrated on this engine: the last finish."""

    def wall(pairs: list[tuple[list[int], LoRARequest | None]]) -> float:
        requests = [Request(str(i), p, SamplingParams(max_tokens=output_len, ignore_eos=True),
                            adapter_id=None if lora is None else lora.lora_int_id) for i, (p, lora) in enumerate(pairs)]
        return max(r.finish_time for r in simulate(setup, requests).records)

    setup = sim_setup(llm.llm_engine, str(profile), shape)
    adapters = list(dict.fromkeys(loras))
    return {"base": wall([(p, None) for p in prompts]), "mixed": wall(list(zip(prompts, loras))),
            "sequential": sum(wall([(p, a) for p, a in zip(prompts, loras) if a is lora]) for lora in adapters)}


def fidelity(predicted_s: float, measured_s: float) -> dict:
    """One run's simulated against measured wall time; same tokens, so the throughput error is their ratio."""
    throughput_error = measured_s / predicted_s - 1
    return {"predicted_wall_s": predicted_s, "wall_error": predicted_s / measured_s - 1,
            "throughput_error": throughput_error, "within_bound": abs(throughput_error) <= THROUGHPUT_BOUND}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--num-adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--input-len", type=int, nargs=2, default=(32, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the three runs this many times")
    parser.add_argument("--simulate", action="store_true",
                        help="also calibrate the LoRA engine here and compare the simulator's wall times")
    parser.add_argument("--json", metavar="FILE", help="write the setup and results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    vocab = SHAPES[args.shape][2]["vocab_size"]
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(*args.input_len))] for _ in range(args.num_requests)]
    params = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True)
    engine = {"dtype": args.dtype, "kv_cache_memory": "2GiB", "skip_tokenizer_init": True,
              "enable_prefix_caching": False}
    setup = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "nproc": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
             "load_average_start": os.getloadavg(), **{k: v for k, v in vars(args).items() if k != "json"}}
    print(" ".join(f"{k}={v}" for k, v in setup.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path, adapters = build(args.shape, args.num_adapters, args.rank, Path(tmp))
        loras = [adapters[i % len(adapters)] for i in range(len(prompts))]
        base = LLM(str(path), **engine)
        llm = LLM(str(path), **engine, enable_lora=True, max_loras=len(adapters), max_lora_rank=args.rank)
        start = time.perf_counter()
        llm.generate([[1]] * len(adapters), SamplingParams(max_tokens=1), use_tqdm=False, lora_request=adapters)
        load_s = time.perf_counter() - start
        by_adapter = [([p for p, a in zip(prompts, loras) if a is lora], lora) for lora in adapters]
        runs = {"base": (base, [(prompts, None)]), "mixed": (llm, [(prompts, loras)]), "sequential": (llm, by_adapter)}
        all_walls: dict[str, list[float]] = {name: [] for name in runs}
        for k in range(args.repeats):
            for name, (engine_llm, batches) in runs.items():
                all_walls[name].append(timed(engine_llm, batches, params))
                print(f"round {k + 1}: {name} {all_walls[name][-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        predicted: dict[str, float] = {}
        calibrate_s = None
        if args.simulate:
            start = time.perf_counter()
            calibration = calibrate(llm.llm_engine, "bench-lora", quiet=True, adapters=adapters)
            calibrate_s = time.perf_counter() - start
            profile = Path(tmp) / "profile.json"
            profile.write_text(json.dumps(calibration.profile_dict({"bench": "bench_lora"})))
            predicted = predicted_walls(llm, args.shape, prompts, loras, args.output_len, profile)
            print("calibrated: " + ", ".join(f"{k}={v:.3g}" for k, v in calibration.efficiency.to_dict().items()))
    walls = {name: statistics.median(w) for name, w in all_walls.items()}
    out_tokens = args.num_requests * args.output_len
    total_tokens = out_tokens + sum(map(len, prompts))
    rows = {name: {"wall_s": wall, "all_wall_s": all_walls[name], "output_tok_s": out_tokens / wall,
                   "total_tok_s": total_tokens / wall, "vs_base": walls["base"] / wall,
                   **(fidelity(predicted[name], wall) if predicted else {})} for name, wall in walls.items()}
    print(f"\n{'run':<12}{'wall s':>9}{'out tok/s':>11}{'total tok/s':>13}{'speed vs base':>15}")
    for name, r in rows.items():
        print(f"{name:<12}{r['wall_s']:>9.1f}{r['output_tok_s']:>11.1f}{r['total_tok_s']:>13.1f}{r['vs_base']:>14.2f}x")
    print(f"mixed is {walls['sequential'] / walls['mixed']:.2f}x as fast as sequential; loading {len(adapters)} "
          f"adapters took {load_s:.1f} s; load average at the end {os.getloadavg()}")
    if predicted:
        print(f"\nsimulated vs measured (calibrated on this engine in {calibrate_s:.0f} s; bound: throughput within "
              f"{THROUGHPUT_BOUND:.0%})")
        print(f"{'run':<12}{'measured s':>12}{'simulated s':>13}{'wall error':>12}{'throughput error':>18}  verdict")
        for name, r in rows.items():
            print(f"{name:<12}{r['wall_s']:>12.1f}{r['predicted_wall_s']:>13.1f}{r['wall_error']:>+12.1%}"
                  f"{r['throughput_error']:>+18.1%}  {'within' if r['within_bound'] else 'OUT of'} bound")
    if args.json:
        setup["load_average_end"] = os.getloadavg()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setup": setup, "adapter_load_s": load_s, "calibrate_s": calibrate_s,
                                               "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

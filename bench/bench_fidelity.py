"""Simulator fidelity: calibrate on the calibration grid, validate on a different, Poisson workload.

A random-weight model of a real shape (or a real checkpoint, `--model DIR`) is calibrated (`batchserve calibrate`'s
grid of prompt chunks, decode batches and mixed steps), then a validation
workload with other length distributions, prefix sharing on, and Poisson
arrivals at `--load` (default 70%) of the saturation the calibrated simulator
predicts (the workload's requests over its offline makespan) runs through both the real engine and the simulator.

    python bench/bench_fidelity.py --shape qwen0.5b --dtype float32 --num-requests 100
    python bench/bench_fidelity.py --shape llama3.2-1b --dtype bfloat16 --device cuda --num-requests 1000
    python bench/bench_fidelity.py --model path/to/SmolLM2-135M-Instruct --num-requests 100
    python bench/bench_fidelity.py --model tiny --num-requests 200 --rate 4 --input-len uniform:16:400 \
        --output-len uniform:8:120 --num-prefix-groups 0
    python bench/bench_fidelity.py --model tiny ... --no-enforce-eager   # compiled decode steps

An offline replay (every request at t=0) follows, since an open-loop run's throughput
only echoes its arrival rate.

`--recalibrate` calibrates once more after the validation runs and predicts the same runs again from that
profile and from one fitted to both grids: on a shared VM whose speed drifts between a calibration and a
validation, a model error stays under every profile, where a drift moves with the calibration's time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import transformers
from bench_engine import SHAPES

from batchserve.attention_layout import ATTENTION_BACKENDS
from batchserve.calibration.device import device_name
from batchserve.calibration.steps import calibrate
from batchserve.calibration.validate import (Validation, compare, format_comparison, is_saturated, sim_setup,
                                             step_cost_line, validate)
from batchserve.engine.llm_engine import LLMEngine
from batchserve.gemm_shapes import RUN_IN_THIS_PROCESS
from batchserve.metrics import summarize
from batchserve.sim.calibration import fit_efficiency
from batchserve.sim.cost_model import Efficiency
from batchserve.sim.simulate import SimSetup, simulate
from batchserve.workload import WorkloadSpec, synthetic_requests


def build_model(shape: str, dtype: torch.dtype, path: str) -> None:
    config_cls, model_cls, fields = SHAPES[shape]
    config = getattr(transformers, config_cls)(**fields, max_position_embeddings=4096, torch_dtype=dtype)
    torch.manual_seed(0)
    getattr(transformers, model_cls)(config).to(dtype).save_pretrained(path)


BRACKETED = ("ttft_p50", "tpot_p50", "throughput")
"""The errors a bracketing recalibration reports again (the issue's bounds)."""


def repredict(setup: SimSetup, efficiency: Efficiency, run: Validation, requests: Callable[[], list],
              warm: tuple[int, ...]) -> dict:
    """A validation's real run against its twin under another profile's efficiency."""
    sim = simulate(replace(setup, efficiency=efficiency, warm_token_counts=warm), requests()).records
    return compare(run.measured, summarize(sim), saturated=is_saturated(run.real))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    parser.add_argument("--model", help="a real HF model directory to use instead of a random-weight --shape")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--load", type=float, default=0.7, help="arrival rate as a fraction of predicted saturation")
    parser.add_argument("--rate", type=float, default=None, help="arrival rate in req/s (instead of --load)")
    parser.add_argument("--num-prefix-groups", type=int, default=4, help="shared 128-token prefixes (0: none)")
    parser.add_argument("--input-len", default="uniform:32:384")
    parser.add_argument("--output-len", default="uniform:16:160")
    parser.add_argument("--kv-cache-memory", default="2GiB")
    parser.add_argument("--grid-passes", type=int, default=None,
                        help="passes of the calibration grid (default: as many as calibrate's time budget allows)")
    parser.add_argument("--offline-requests", type=int, default=None,
                        help="also replay this many requests offline (all at t=0), the run whose throughput tests "
                             "the cost model (default: --num-requests; 0: skip)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="calibrate again after the validation runs; predict them from that profile and from "
                             "one fitted to both grids too (the bracketing tells a drift of the VM from a model error)")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-enforce-eager: the engine runs compiled decode steps, calibrated and validated so")
    parser.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="torch",
                        help="the engine's paged attention kernel, calibrated and validated so")
    parser.add_argument("--out", default=None, help="directory for the profile and the JSON result")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, {platform.machine()}, torch {torch.__version__}, "
          f"device {args.device}, load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        if args.model is None:
            build_model(args.shape, dtype, tmp)
        llm = LLMEngine(args.model or tmp, device=args.device, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
                        skip_tokenizer_init=True, enforce_eager=args.enforce_eager,
                        attention_backend=args.attention_backend)
        name = args.model or args.shape
        mode = "eager" if args.enforce_eager else "compiled decode steps"
        print(f"loaded {name} ({args.dtype}, {mode}, {args.attention_backend} attention) in {time.perf_counter() - t:.0f} s on {device_name(llm.device)}")
        t = time.perf_counter()
        cal = calibrate(llm, f"calibrated-{args.device}", grid_passes=args.grid_passes)
        print(f"calibrated in {time.perf_counter() - t:.0f} s on {len(cal.observations)} steps "
              f"(medians over {cal.grid_passes} grid passes); fit: "
              + ", ".join(f"{k} MAPE {r['mape']:.1%}" for k, r in cal.report.items()))
        profile = os.path.join(args.out or tmp, "profile.json")
        os.makedirs(os.path.dirname(profile), exist_ok=True)
        with open(profile, "w") as f:
            meta = {"shape": name, "dtype": args.dtype, "enforce_eager": args.enforce_eager,
                    "attention_backend": args.attention_backend}
            json.dump(cal.profile_dict(meta), f, indent=2)
        if args.out:
            with open(os.path.join(args.out, "observations.jsonl"), "w") as f:
                f.writelines(json.dumps(o.to_dict()) + "\n" for o in cal.observations)
        setup = sim_setup(llm, profile, os.path.basename(name.rstrip("/")))
        spec = WorkloadSpec(num_requests=args.num_requests, input_len=args.input_len, output_len=args.output_len,
                            num_prefix_groups=args.num_prefix_groups,
                            prefix_len=128 if args.num_prefix_groups else 0, vocab_size=llm.model_config.vocab_size, seed=7)
        # the rate the twin serves this workload at, all of it queued at t=0: its requests over their makespan.
        # (Not steady_throughput's middle 80% of finishes: with no more requests than the batch holds, all start
        # at once and finish in order of length, so that window measures the length spread, not a rate: the real
        # SmolLM2 and Qwen runs of sessions 9-29 arrived at 1.2-1.9x the rate their offline replay measured, an
        # overload that amplified step-cost errors in TTFT and TPOT.)
        offline_twin = simulate(setup, synthetic_requests(spec)).records
        capacity = len(offline_twin) / max(r.finish_time for r in offline_twin)
        rate = args.load * capacity if args.rate is None else args.rate
        print(f"predicted saturation {capacity:.2f} req/s (the workload's requests over the twin's offline "
              f"makespan); validating {args.num_requests} requests at {rate:.2f} req/s")
        t = time.perf_counter()
        open_loop = lambda: synthetic_requests(replace(spec, rate=rate))  # noqa: E731
        warm = {"open-loop": RUN_IN_THIS_PROCESS.snapshot()}  # what validate's twin starts with
        result = validate(llm, setup, open_loop)
        print(f"validated in {time.perf_counter() - t:.0f} s")
        offline_n = args.num_requests if args.offline_requests is None else args.offline_requests
        offline = None
        offline_run = lambda: synthetic_requests(replace(spec, num_requests=offline_n, seed=8))  # noqa: E731
        if offline_n:
            t = time.perf_counter()
            warm["offline"] = RUN_IN_THIS_PROCESS.snapshot()
            offline = validate(llm, setup, offline_run)
            print(f"offline replay of {offline_n} requests in {time.perf_counter() - t:.0f} s")
        bracket = None
        if args.recalibrate:
            t = time.perf_counter()
            after = calibrate(llm, f"calibrated-{args.device}", grid_passes=args.grid_passes)
            print(f"calibrated again in {time.perf_counter() - t:.0f} s")
            pooled = fit_efficiency(cal.deployment, cal.observations + after.observations)
            runs = {"open-loop": (result, open_loop), "offline": (offline, offline_run)}
            bracket = {label: {name: repredict(setup, eff, run, requests, warm[name])
                               for name, (run, requests) in runs.items() if run is not None}
                       for label, eff in (("after", after.efficiency), ("both grids", pooled))}
            if args.out:
                with open(os.path.join(args.out, "observations-after.jsonl"), "w") as f:
                    f.writelines(json.dumps(o.to_dict()) + "\n" for o in after.observations)
    print(f"load average at the end {os.getloadavg()}; open loop at {rate:.2f} req/s:")
    print(format_comparison(result.metrics))
    mape = result.per_request_mape
    print(f"per-request MAPE: TTFT {mape['ttft']:.1%}, E2E {mape['e2e']:.1%}")
    print(step_cost_line(result))
    if offline is not None:
        print(f"offline, {offline_n} requests at t=0 (saturated):")
        print(format_comparison(offline.metrics))
        print(step_cost_line(offline))
    if bracket is not None:
        print("the same runs predicted from the profile calibrated after them, and from one fitted to both grids:")
        print("| profile | run | " + " | ".join(BRACKETED) + " |")
        print("| --- | --- |" + " --- |" * len(BRACKETED))
        for label, runs in bracket.items():
            for name, metrics in runs.items():
                cells = [metrics[m]["error"] for m in BRACKETED]
                print(f"| {label} | {name} | " + " | ".join("-" if e is None else f"{e:+.1%}" for e in cells) + " |")
    if args.out:  # beside the grid: the validation runs' own steps, to re-price them offline
        for label, run in (("open-loop", result), ("offline", offline)):
            if run is not None:
                with open(os.path.join(args.out, f"{label}-steps.jsonl"), "w") as f:
                    f.writelines(json.dumps(o.to_dict()) + "\n" for o in run.steps)
        with open(os.path.join(args.out, "fidelity.json"), "w") as f:
            json.dump({"args": vars(args), "capacity": capacity, "rate": rate, "fit": cal.report,
                       "metrics": result.metrics, "per_request_mape": mape,
                       "step_costs": {k: c.to_dict() for k, c in result.step_costs.items()},
                       "offline_metrics": offline.metrics if offline is not None else None,
                       "offline_step_costs": {k: c.to_dict() for k, c in offline.step_costs.items()}
                       if offline is not None else None, "bracket": bracket}, f, indent=2)


if __name__ == "__main__":
    main()

"""`run --estimate` against the run it predicts: estimated vs actual wall time for a few job shapes on CPU (--dtype).

For each model (the built-in `tiny`, and a real SmolLM2-135M HF directory when
--real-model names one), the bench calibrates this machine once, then per job
shape: estimates with no evidence (every request to max_tokens: the upper
bound), estimates with --sample K (K about 5% of the job: it runs those K,
writing their results), runs the rest (which skips the sample by resuming),
and compares the estimate with the whole job's actual wall time (sample plus
rest, from the loaded model to the last result written).

    python bench/bench_estimate.py
    python bench/bench_estimate.py --real-model /path/to/SmolLM2-135M-Instruct-hf --sample-fraction 0.05

Timings on a shared VM swing with other load; each line says what ran when.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import numpy as np
import torch
from bench_run import cpu_model

from batchserve.calibration.steps import calibrate
from batchserve.calibration.validate import StepCosts
from batchserve.engine.llm_engine import LLMEngine
from batchserve.jobs.batch_io import Done
from batchserve.jobs.engine_backend import EngineBackend, local_job
from batchserve.jobs.estimate import EstimateConfig, estimate_job, plan_job, with_peaks
from batchserve.jobs.runner import JobConfig
from batchserve.jobs.setup import RunSetup
from batchserve.jobs.twin import simulate_entries
from batchserve.sim.calibration import Observation, predict
from batchserve.sim.simulate import SimSetup

WORDS = ["tea", "sky", "river", "stone", "lamp", "field", "cloud", "iron"]
TOPICS = ["the moon", "rivers", "bread", "volcanoes", "chess", "bees", "glass", "winter", "maps", "clocks", "salt",
          "trains", "owls", "paper", "rain", "copper"]
ASKS = ["What is {}? Answer in one sentence.", "Write a short poem about {}.", "Give three facts about {}.",
        "Explain how {} work, step by step.", "Name one word related to {}."]


def completion(cid: str, prompt: str, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/completions", "body": {"prompt": prompt, **body}}


def tiny_shapes(n: int, rng: random.Random) -> dict[str, list[dict]]:
    """Job shapes on tiny (noise text): EOS forced by a bias after a floor that grows with the prompt."""

    def prompt(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    system = prompt(60)
    early = []
    for i in range(n):
        words = rng.choice([3, 12, 40])
        early.append(completion(f"e{i}", prompt(words), max_tokens=64, min_tokens=words // 2 + rng.randint(0, 8),
                                logit_bias={"257": 5}))
    shared = [completion(f"s{i}", system + " " + prompt(rng.randint(2, 10)), max_tokens=rng.choice([16, 32]),
                         ignore_eos=True) for i in range(n)]
    tail = [completion(f"t{i}", prompt(rng.randint(2, 30)), max_tokens=128, logit_bias={"257": 2.5})
            for i in range(n)]
    return {"early-stop": early, "shared-prefix-fixed": shared, "long-tail": tail}


def chat_shapes(n: int, rng: random.Random) -> dict[str, list[dict]]:
    """Real chat jobs (outputs end at EOS): short Q&A under a shared system prompt, long generations, and
    extraction questions over one shared document."""
    system = "You are a concise assistant. Answer accurately and keep answers short unless asked for detail."

    def chat(cid: str, system: str, user: str, max_tokens: int) -> dict:
        body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                "max_tokens": max_tokens}
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}

    qa = [chat(f"c{i}", system, rng.choice(ASKS).format(rng.choice(TOPICS)), 128) for i in range(n)]
    stories = [chat(f"g{i}", "You are a storyteller.", f"Write a long story about {rng.choice(TOPICS)}.", 384)
               for i in range(n)]
    document = " ".join(f"{t.capitalize()} are described in section {i + 1}." for i, t in enumerate(TOPICS)) * 4
    extract = [chat(f"x{i}", "Answer from the document only.\n\n" + document,
                    f"Which section describes {rng.choice(TOPICS)}? Answer with the number.", 32) for i in range(n)]
    return {"chat-shared-system": qa, "long-generations": stories, "shared-prefix-extraction": extract}


def real_lengths(out: Path) -> dict[str, list[int]]:
    """Each request's output length in the job's results file."""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["custom_id"]: [r["response"]["body"]["usage"]["completion_tokens"]] for r in rows}


ROW_BUCKETS = (1, 8, 32, 48, 64)
"""Step rows (decode rows for a step with decodes, prompts otherwise) bucketed for the step-cost breakdown:
[1, 8), [8, 32), [32, 48), [48, 64), 64 and up."""


def step_cost_breakdown(steps: list[Observation], priced: np.ndarray, by_estimate: np.ndarray) -> list[dict]:
    """The run's steps by kind and rows bucket, each bucket's measured and priced seconds (validate's StepCosts),
    and its seconds at the estimate's own costs (`by_estimate`)."""
    keys = [(o.kind, max(b for b in ROW_BUCKETS if b <= max(o.shape.num_decodes or o.shape.num_prefill_seqs, 1)))
            for o in steps]
    measured = np.array([o.seconds for o in steps])
    out = []
    for kind, rows_from in sorted(set(keys)):
        mask = np.array([k == (kind, rows_from) for k in keys])
        costs = StepCosts(int(mask.sum()), float(measured[mask].sum()), float(priced[mask].sum()))
        out.append({"kind": kind, "rows_from": rows_from, **costs.to_dict(),
                    "by_estimate_s": float(by_estimate[mask].sum())})
    return out


def twin_with_real_lengths(inp: Path, lengths: dict[str, list[int]], setup: RunSetup, sim: SimSetup,
                           config: JobConfig, k: int, sample_s: float, overhead_s: float) -> float:
    """The estimate's twin given the lengths the run produced: the sample's measured time plus the rest simulated,
    as `estimate_job` composes them. Against the estimate it isolates the length model; against the price of the
    run's own steps, the twin's scheduling."""
    job = plan_job(str(inp), Done(), setup, config)
    chosen = {r.custom_id for r in job.sample(k, EstimateConfig().grouping, config.seed)}  # the estimate's own
    rest = [e for e in job.entries if getattr(e, "custom_id", None) not in chosen]
    summary = simulate_entries(rest, sim, config, lengths=lengths)
    return sample_s + summary.wall_s + overhead_s * summary.num_requests


def bench_shape(name: str, rows: list[dict], setup: RunSetup, profile: str, k: int, tmp: Path,
                probe_steps: int | None = None) -> dict:
    inp, out = tmp / f"{name}.jsonl", tmp / f"{name}-out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = JobConfig()
    upper = estimate_job(str(inp), None, setup, profile, config)
    backend = EngineBackend(LLMEngine(setup.model, **setup.engine_args()))
    est = estimate_job(str(inp), str(out), setup, profile, config, EstimateConfig(sample=k, probe_steps=probe_steps),
                       make_backend=lambda: backend)
    rest = local_job(str(inp), str(out), setup.model, setup.engine_args(), config, True, lambda: backend)
    actual = rest.wall_s + est.info["sample"]["wall_s"]
    # what the next estimate of this job shape would say, scaled by this full run (`--profile-from RUN.json`)
    record = est.measurements.merged(backend.log.take())
    record.wall_s, record.num_requests = actual, len(rows)  # as `run --json` records a whole run
    full_run = tmp / f"{name}-run.json"
    full_run.write_text(json.dumps({"measurements": record.to_dict()}))
    from_run = estimate_job(str(inp), None, setup, profile, config, profile_from=str(full_run))
    sim = setup.sim_setup(profile)
    steps_s = sum(o.seconds for o in record.steps)
    priced = predict(sim.deployment, sim.efficiency, record.steps)
    # the run's steps at the estimate's own costs (this CPU's peaks, the sample's fit, the probe's scale), and
    # without the probe's scale: what the probe did to the step-cost part of the error, lengths apart
    peaks = est.info.get("peaks")
    est_sim = with_peaks(sim, peaks["flops"], peaks["memory_bandwidth"]) if peaks else sim
    est_costs = replace(est_sim.efficiency, time_scale=est.info["time_scale"],
                        sequence_overhead_s=est.info["sequence_overhead_s"])
    by_estimate = predict(est_sim.deployment, est_costs, record.steps)
    probe = est.info.get("probe")
    tokens = rest.output_tokens + est.info["sample"]["output_tokens"]
    lengths = real_lengths(out)
    exact = twin_with_real_lengths(inp, lengths, setup, sim, config, k, est.info["sample"]["wall_s"],
                                   est.info["loop_overhead_s_per_request"])
    lo, hi = est.wall_s_range
    t_lo, t_hi = est.output_tokens_range
    return {"shape": name, "requests": len(rows), "sample": k, "upper_bound_s": upper.summary.wall_s,
            "estimate_s": est.summary.wall_s, "p10_s": lo, "p90_s": hi, "actual_s": actual,
            "error": est.summary.wall_s / actual - 1, "inside": lo <= actual <= hi,
            "tokens_inside": t_lo <= tokens <= t_hi, "est_tokens_p10": t_lo, "est_tokens_p90": t_hi,
            "from_run_s": from_run.summary.wall_s,
            "from_run_scale": from_run.info["time_scale"], "est_tokens": est.summary.output_tokens, "tokens": tokens,
            "sample_step_ratio": est.info["sample"].get("step_time_ratio"), "run_steps_s": steps_s,
            "run_steps_predicted_s": float(priced.sum()), "run_steps_by_kind": step_cost_breakdown(record.steps, priced, by_estimate),
            "run_loop_s_per_request": record.loop_overhead_s, "twin_real_lengths_s": exact,
            "run_steps_priced_by_estimate_s": float(by_estimate.sum()), "probe": probe,
            "sample_for_target": est.info.get("sample_for_target"),
            "estimate_costs": {"time_scale": est.info["time_scale"],
                               "sequence_overhead_s": est.info["sequence_overhead_s"], "peaks": peaks},
            "run_steps_priced_without_probe_s": float(by_estimate.sum()) / (probe["time_scale_ratio"] if probe else 1),
            "real_lengths": lengths, "sample_lengths": [c.to_list() for c in est.measurements.completions]}


def calibrated(model: str, setup: RunSetup, args: argparse.Namespace, tmp: Path) -> str:
    """Calibrate this machine for `model` as the job will run it; the profile's path."""
    llm = LLMEngine(model, **setup.engine_args(), skip_tokenizer_init=True)
    cal = calibrate(llm, "calibrated-cpu", quiet=True, grid_passes=args.grid_passes)
    del llm
    profile = tmp / f"{Path(model).name}-profile.json"
    profile.write_text(json.dumps(cal.profile.to_dict()))
    if args.json:  # beside the figures: the profile and the grid it was fitted to, to refit offline
        Path(args.json).with_suffix(f".{Path(model).name}-profile.json").write_text(profile.read_text())
        Path(args.json).with_suffix(f".{Path(model).name}-grid.jsonl").write_text(
            "".join(json.dumps(o.to_dict()) + "\n" for o in cal.observations))
    fit = ", ".join(f"{kind} {r['steps']} steps mape {r['mape']:.1%} total {r['total_time_error']:+.1%}"
                    for kind, r in cal.report.items() if isinstance(r, dict) and "mape" in r)
    print(f"{Path(model).name}: calibrated {args.dtype} ({cal.grid_passes} grid passes): {fit}; efficiency "
          f"{json.dumps(dict(cal.profile.efficiency))}", flush=True)
    return str(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=96, help="requests per tiny job shape")
    parser.add_argument("--real-model", default=None,
                        help="SmolLM2-135M-Instruct: its GGUF file or a HF directory (skipped if absent)")
    parser.add_argument("--real-requests", type=int, default=200,
                        help="requests per real-model job shape (200 at the default 5%% gives a 10-request sample)")
    parser.add_argument("--sample-fraction", type=float, default=0.05, help="--sample as a fraction of the job")
    parser.add_argument("--kv-cache-memory", default=None, help="KV cache size (default: the engine's, 1GiB on CPU)")
    parser.add_argument("--no-tiny", action="store_true", help="only the real model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--shapes", nargs="*", default=None, help="only these job shapes (default: all)")
    parser.add_argument("--grid-passes", type=int, default=None,
                        help="calibration grid passes (default: as many as calibrate's time budget holds)")
    parser.add_argument("--hardware", default=None,
                        help="estimate against this catalog entry or profile instead of calibrating first (e.g. "
                             "cpu-local: the uncalibrated placeholder, scaled to each sample)")
    parser.add_argument("--json", default=None, help="write every shape's figures to this file")
    parser.add_argument("--probe-steps", type=int, default=EstimateConfig.probe_steps,
                        help="the estimate's probe of decode steps as wide as the job's, after the sample "
                             "(0: none; default: the estimate's rule, 8 on the placeholder)")
    args = parser.parse_args()
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
          f"torch threads {torch.get_num_threads()}, cpu {cpu_model()}, torch {torch.__version__}, {args.dtype}, "
          f"load average {os.getloadavg()}")
    models = [] if args.no_tiny else [("tiny", tiny_shapes, args.num_requests)]
    real = Path(args.real_model) if args.real_model else None
    if real is not None and (real.suffix == ".gguf" or (real / "config.json").is_file()):
        models.append((args.real_model, chat_shapes, args.real_requests))
    elif real is not None:
        print(f"skipping the real model: {real} is neither a GGUF file nor a directory with a config.json")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, shapes, n in models:
            setup = RunSetup(model=model, dtype=args.dtype, device="cpu", kv_cache_memory=args.kv_cache_memory,
                             max_num_batched_tokens=512, max_num_seqs=64)
            profile = args.hardware or calibrated(model, setup, args, Path(tmp))
            k = max(1, round(args.sample_fraction * n))
            for name, rows in shapes(n, random.Random(0)).items():
                if args.shapes is not None and name not in args.shapes:
                    continue
                r = bench_shape(name, rows, setup, profile, k, Path(tmp), args.probe_steps)
                results.append({"model": Path(model).name, "dtype": args.dtype, **r})
                if args.json:  # the whole run's steps and lengths (a `run --json` record), to re-price offline
                    Path(args.json).with_suffix(f".{Path(model).name}.{name}-run.json").write_text(
                        (Path(tmp) / f"{name}-run.json").read_text())
                print(f"{Path(model).name:>10} {r['shape']:<20} {r['requests']:3d} req, sample {r['sample']:2d}: "
                      f"estimate {r['estimate_s']:6.2f} s (p10-p90 {r['p10_s']:.2f}-{r['p90_s']:.2f}), "
                      f"actual {r['actual_s']:6.2f} s, error {r['error']:+6.1%}, "
                      f"{'inside' if r['inside'] else 'OUTSIDE'} p10-p90; output tokens est/real "
                      f"{r['est_tokens'] / r['tokens']:.2f} ({r['est_tokens']} / {r['tokens']}, p10-p90 "
                      f"{r['est_tokens_p10']:.0f}-{r['est_tokens_p90']:.0f}, "
                      f"{'inside' if r['tokens_inside'] else 'OUTSIDE'}); sample steps measured/charged "
                      f"{r['sample_step_ratio']:.2f}; --profile-from this run {r['from_run_s']:6.2f} s (scale "
                      f"{r['from_run_scale']:.2f}); no-sample upper bound {r['upper_bound_s']:6.2f} s; "
                      f"the run: steps "
                      f"{r['run_steps_s']:.2f} s (profile {r['run_steps_predicted_s']:.2f} s), outside steps "
                      f"{r['run_loop_s_per_request'] * 1e3:.2f} ms per request; the twin given the run's own "
                      f"lengths {r['twin_real_lengths_s']:.2f} s; the run's steps at the estimate's costs "
                      f"{r['run_steps_priced_by_estimate_s']:.2f} s, without the probe's scale "
                      f"{r['run_steps_priced_without_probe_s']:.2f} s"
                      + (f"; probe {r['probe']['width']} rows x {r['probe']['steps']} steps, "
                         f"{r['probe']['wall_s']:.2f} s, scale x{r['probe']['time_scale_ratio']:.3f}"
                         if r["probe"] else "; no probe")
                      + (f"; for +-{r['sample_for_target']['target_token_error']:.0%} tokens: --sample "
                         f"{r['sample_for_target']['sample']}" if r["sample_for_target"] else ""), flush=True)
                for b in r["run_steps_by_kind"]:
                    print(f"    {b['kind']:<8} rows {b['rows_from']:>3}+ {b['num']:5d} steps: measured "
                          f"{b['measured_s']:7.2f} s, priced {b['priced_s']:7.2f} s ({b['priced_over_measured']:.2f}x), at the "
                          f"estimate's costs {b['by_estimate_s']:7.2f} s ({b['by_estimate_s'] / b['measured_s']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

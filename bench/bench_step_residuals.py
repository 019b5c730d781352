"""Where the simulator's misses come from: each real step's measured time beside the cost model's prediction.

Calibrates the model on this machine (`calibrate`'s grid), then runs a
validation workload through the real engine (as `validate` does) while
recording every step: its shape, its wall time inside `engine.step()`, the
wall time between steps (the replay loop), and how many decode groups its
attention ran (`attention_layout.decode_groups`). Residuals are
log(measured / predicted) per step, summarised by step kind, decode batch size,
decode-group count and context; the simulator's own run gives the latency
errors `validate` reports. Run it twice to see the run-to-run spread.

    python bench/bench_step_residuals.py --model tiny --num-requests 200 --rate 4
    python bench/bench_step_residuals.py --model SmolLM2-135M-Instruct.Q4_1.gguf --num-requests 64 --rate 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from batchserve.attention_layout import decode_groups
from batchserve.calibration.steps import calibrate
from batchserve.calibration.validate import format_comparison, sim_setup, validate
from batchserve.engine.llm_engine import LLMEngine
from batchserve.gemm_shapes import SeenTokenCounts
from batchserve.sim.calibration import Observation, predict
from batchserve.sim.executor import step_shape
from batchserve.workload import WorkloadSpec, synthetic_requests


class StepRecorder:
    """Wraps an engine's `step` to time each step and the gap before it."""

    def __init__(self, engine) -> None:
        self.engine, self.step = engine, engine.step
        self.rows: list[dict] = []
        self._last_end: float | None = None
        self.seen = SeenTokenCounts()
        engine.step = self

    def __call__(self):
        start = time.perf_counter()
        out = self.step()
        end = time.perf_counter()
        if out.result is not None:
            batch = out.batch
            keys = [c + 1 for n, c in zip(batch.num_tokens, batch.num_computed) if n == 1]
            ratio = self.engine.executor.attention.decode_bucket_ratio
            self.rows.append({"shape": step_shape(batch, self.engine.executor.attention, seen=self.seen),
                              "seconds": end - start,
                              "gap_s": 0.0 if self._last_end is None else start - self._last_end,
                              "decode_groups": len(decode_groups(keys, ratio)) if keys else 0})
        self._last_end = end
        return out


def summarise(rows: list[dict], predicted: np.ndarray) -> list[tuple[str, int, float, float, float]]:
    """(group, steps, median log-ratio as %, measured s, predicted s) per step feature bucket."""
    measured = np.array([r["seconds"] for r in rows])
    ratio = np.log(measured / predicted)

    def line(name: str, mask: np.ndarray) -> tuple[str, int, float, float, float]:
        return (name, int(mask.sum()), float(np.expm1(np.median(ratio[mask]))) if mask.any() else float("nan"),
                float(measured[mask].sum()), float(predicted[mask].sum()))

    shapes = [r["shape"] for r in rows]
    decodes = np.array([s.num_decodes for s in shapes])
    prefill = np.array([s.num_prefill_tokens for s in shapes])
    groups = np.array([r["decode_groups"] for r in rows])
    context = np.array([s.decode_context_tokens / max(s.num_decodes, 1) for s in shapes])
    out = [line("all", np.ones(len(rows), bool)), line("prefill only", (prefill > 0) & (decodes == 0)),
           line("mixed", (prefill > 0) & (decodes > 0)), line("decode only", (prefill == 0) & (decodes > 0))]
    pure = (prefill == 0) & (decodes > 0)
    for lo, hi in ((1, 4), (4, 16), (16, 64), (64, 10**9)):
        out.append(line(f"decode only, {lo}-{hi - 1} rows", pure & (decodes >= lo) & (decodes < hi)))
    for lo, hi in ((1, 2), (2, 4), (4, 8), (8, 10**9)):
        out.append(line(f"decode only, {lo}-{hi - 1} groups", pure & (groups >= lo) & (groups < hi)))
    for lo, hi in ((0, 128), (128, 512), (512, 10**9)):
        out.append(line(f"decode only, mean context {lo}-{hi - 1}", pure & (context >= lo) & (context < hi)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hardware", help="a calibrated profile to use instead of calibrating here")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--input-len", default="uniform:16:400")
    parser.add_argument("--output-len", default="uniform:8:120")
    parser.add_argument("--kv-cache-memory", default="256MiB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    load_start = os.getloadavg()
    llm = LLMEngine(args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory, skip_tokenizer_init=True)
    with tempfile.TemporaryDirectory() as tmp:
        profile = args.hardware
        if profile is None:
            t = time.perf_counter()
            calibration = calibrate(llm, "residuals", quiet=True)
            profile = str(Path(tmp) / "profile.json")
            Path(profile).write_text(json.dumps(calibration.profile_dict({"model": args.model})))
            print(f"calibrated in {time.perf_counter() - t:.0f} s: " + ", ".join(
                f"{k}={v:.3g}" for k, v in calibration.efficiency.to_dict().items()))
        setup = sim_setup(llm, profile, args.model)
    spec = WorkloadSpec(num_requests=args.num_requests, rate=args.rate, input_len=args.input_len,
                        output_len=args.output_len, vocab_size=llm.model_config.vocab_size, seed=args.seed)
    recorder = StepRecorder(llm.engine)
    t = time.perf_counter()
    result = validate(llm, setup, lambda: synthetic_requests(spec), quiet=True)
    wall = time.perf_counter() - t
    rows = recorder.rows
    predicted = predict(setup.deployment, setup.efficiency, [Observation(r["shape"], 1.0) for r in rows])
    step_s = sum(r["seconds"] for r in rows)
    busy_gaps = sum(r["gap_s"] for r in rows if r["gap_s"] < 0.05)  # the loop between back-to-back steps
    print(f"{args.model}: {len(rows)} steps, {step_s:.1f} s in steps of {wall:.1f} s wall (real run + simulation); "
          f"between back-to-back steps {busy_gaps:.2f} s ({busy_gaps / max(step_s, 1e-9):.1%} of step time); "
          f"load average {load_start} -> {os.getloadavg()}")
    print(f"{'steps':<36}{'count':>7}{'median meas/pred':>18}{'measured s':>12}{'predicted s':>13}")
    table = summarise(rows, predicted)
    for name, n, med, m, p in table:
        if n:
            print(f"{name:<36}{n:>7}{med:>+17.1%}{m:>12.2f}{p:>13.2f}")
    print(format_comparison(result.metrics))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "args": vars(args), "load_average": [load_start, os.getloadavg()], "efficiency": setup.efficiency.to_dict(),
            "residuals": [dict(zip(("group", "steps", "median_meas_over_pred", "measured_s", "predicted_s"), row))
                          for row in table],
            "metrics": result.metrics}, indent=2) + "\n")


if __name__ == "__main__":
    main()

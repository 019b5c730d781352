"""Where the simulator's misses come from: each real step's measured time beside the cost model's prediction.

Calibrates the model on this machine (`calibrate`'s grid), then runs a
validation workload through the real engine (as `validate` does) while
recording every step: its shape, its wall time inside `engine.step()`, the
wall time between steps (the replay loop) and how many steps it follows the
engine's last wake-up (a request arriving to an idle engine). Residuals are
log(measured / predicted) per step, summarised by step kind, decode batch size,
decode-group count, context and steps since a wake-up, beside the calibration
grid's own steps in the same buckets (a validation step slower than the grid's
of its kind, where the fit prices the grid's well, is the run's conditions, not
the cost model); the simulator's own run gives the latency errors `validate`
reports. Run it twice to see the run-to-run spread.

    python bench/bench_step_residuals.py --model tiny --num-requests 200 --rate 4
    python bench/bench_step_residuals.py --model tiny --num-requests 200 --offline
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

from batchserve.calibration.steps import calibrate
from batchserve.calibration.validate import format_comparison, sim_setup, validate
from batchserve.engine.llm_engine import LLMEngine
from batchserve.gemm_shapes import RUN_IN_THIS_PROCESS, SeenTokenCounts
from batchserve.sim.calibration import Observation, predict
from batchserve.sim.executor import step_shape
from batchserve.workload import WorkloadSpec, synthetic_requests


class StepRecorder:
    """Wraps an engine's `step` to time each step and the gap before it."""

    def __init__(self, engine, seen: SeenTokenCounts) -> None:
        self.engine, self.step = engine, engine.step
        self.rows: list[dict] = []
        self._last_end: float | None = None
        self._since_wakeup = 0
        self._idle = True  # nothing to run after the last step: the driver sleeps until the next arrival
        self.seen = seen
        engine.step = self

    def __call__(self):
        woke = self._idle
        start = time.perf_counter()
        out = self.step()
        end = time.perf_counter()
        if out.result is not None:
            self._since_wakeup = 0 if woke else self._since_wakeup + 1
            self.rows.append({"shape": step_shape(out.batch, self.engine.executor.attention, seen=self.seen,
                                                  num_wakeups=int(woke)),
                              "seconds": end - start,
                              "gap_s": 0.0 if woke else start - self._last_end,
                              "since_wakeup": self._since_wakeup})
        self._last_end, self._idle = end, not self.engine.has_unfinished()
        return out


Row = tuple[str, int, float, float, float, float]
FIELDS = ("group", "steps", "median_meas_over_pred", "median_measured_s", "measured_s", "predicted_s")


def summarise(rows: list[dict], predicted: np.ndarray) -> list[Row]:
    """(group, steps, median log-ratio as %, median measured s, measured s, predicted s) per step feature bucket
    (steps since the engine woke only where rows know it: a validation run's, not the calibration grid's)."""
    measured = np.array([r["seconds"] for r in rows])
    ratio = np.log(measured / predicted)

    def line(name: str, mask: np.ndarray) -> Row:
        if not mask.any():
            return name, 0, float("nan"), float("nan"), 0.0, 0.0
        return (name, int(mask.sum()), float(np.expm1(np.median(ratio[mask]))), float(np.median(measured[mask])),
                float(measured[mask].sum()), float(predicted[mask].sum()))

    shapes = [r["shape"] for r in rows]
    decodes = np.array([s.num_decodes for s in shapes])
    prefill = np.array([s.num_prefill_tokens for s in shapes])
    groups = np.array([s.num_decode_groups for s in shapes])
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
    new = np.array([s.num_new_shapes for s in shapes]) > 0
    out += [line("decode only, new token count", pure & new), line("decode only, token count seen", pure & ~new),
            line("with prefill, new token count", (prefill > 0) & new),
            line("with prefill, token count seen", (prefill > 0) & ~new)]
    since = np.array([r.get("since_wakeup", -1) for r in rows])
    for lo, hi in ((0, 1), (1, 8), (8, 64), (64, 10**9)):
        out.append(line(f"step {lo}{'' if hi == lo + 1 else '+' if hi > 64 else f'-{hi - 1}'} after a wake-up",
                        (since >= lo) & (since < hi)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hardware", help="a calibrated profile to use instead of calibrating here")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--offline", action="store_true", help="every request at t=0 (a saturated run), not --rate")
    parser.add_argument("--input-len", default="uniform:16:400")
    parser.add_argument("--output-len", default="uniform:8:120")
    parser.add_argument("--kv-cache-memory", default="256MiB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    load_start = os.getloadavg()
    llm = LLMEngine(args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory, skip_tokenizer_init=True)
    grid: list[Observation] = []
    with tempfile.TemporaryDirectory() as tmp:
        profile = args.hardware
        if profile is None:
            t = time.perf_counter()
            calibration = calibrate(llm, "residuals", quiet=True)
            grid = calibration.observations
            profile = str(Path(tmp) / "profile.json")
            Path(profile).write_text(json.dumps(calibration.profile_dict({"model": args.model})))
            print(f"calibrated in {time.perf_counter() - t:.0f} s: " + ", ".join(
                f"{k}={v:.3g}" for k, v in calibration.efficiency.to_dict().items()))
        setup = sim_setup(llm, profile, args.model)
    seen = RUN_IN_THIS_PROCESS.copy()  # the token counts whose kernels this process holds
    spec = WorkloadSpec(num_requests=args.num_requests, rate=None if args.offline else args.rate, input_len=args.input_len,
                        output_len=args.output_len, vocab_size=llm.model_config.vocab_size, seed=args.seed)
    recorder = StepRecorder(llm.engine, seen)
    t = time.perf_counter()
    result = validate(llm, setup, lambda: synthetic_requests(spec), quiet=True)
    wall = time.perf_counter() - t
    rows = recorder.rows
    predicted = predict(setup.deployment, setup.efficiency, [Observation(r["shape"], 1.0) for r in rows])
    step_s = sum(r["seconds"] for r in rows)
    busy_gaps = sum(r["gap_s"] for r in rows)  # the driver loop between back-to-back steps (no sleep)
    print(f"{args.model}: {len(rows)} steps, {step_s:.1f} s in steps of {wall:.1f} s wall (real run + simulation); "
          f"between back-to-back steps {busy_gaps:.2f} s ({busy_gaps / max(step_s, 1e-9):.1%} of step time); "
          f"load average {load_start} -> {os.getloadavg()}")
    table = summarise(rows, predicted)
    # The calibration grid's own steps in the same buckets: validation steps measuring slower than the grid's of
    # the same kind (while the fit prices the grid's well) point at the run's conditions, not the cost model.
    grid_rows = [{"shape": o.shape, "seconds": o.seconds} for o in grid]
    grid_table = summarise(grid_rows, predict(setup.deployment, setup.efficiency, grid)) if grid else []
    grid_by_name = {row[0]: row for row in grid_table}
    print(f"{'steps':<36}{'count':>7}{'median ms':>11}{'meas/pred':>11}   {'grid count':>10}{'median ms':>11}"
          f"{'meas/pred':>11}")
    for name, n, ratio, median, _, _ in table:
        if not n:
            continue
        g = grid_by_name.get(name)
        grid_cells = f"{g[1]:>10}{g[3] * 1e3:>11.3f}{g[2]:>+11.1%}" if g and g[1] else ""
        print(f"{name:<36}{n:>7}{median * 1e3:>11.3f}{ratio:>+11.1%}   {grid_cells}")
    print(format_comparison(result.metrics))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "args": vars(args), "load_average": [load_start, os.getloadavg()], "efficiency": setup.efficiency.to_dict(),
            "residuals": [dict(zip(FIELDS, row)) for row in table],
            "grid_residuals": [dict(zip(FIELDS, row)) for row in grid_table],
            "metrics": result.metrics}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Replay one workload through the real engine and through the simulator, and compare.

Both sides get the same requests (prompt token ids, output lengths, arrival
times), the same scheduler config and the same number of KV blocks; the
simulator uses a calibrated hardware profile. What differs is only step
durations, so the error measures the cost model, not the setup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..config import CacheConfig
from ..engine.llm_engine import LLMEngine
from ..gemm_shapes import RUN_IN_THIS_PROCESS
from ..lora import LoRAConfig
from ..metrics import SLO, RequestRecord, summarize
from ..progress import Progress
from ..request import Request
from ..sim.calibration import Observation, predict
from ..sim.executor import step_shape
from ..sim.simulate import ClusterConfig, SimSetup, resolve, simulate
from ..sim.speculation import SpecAcceptance
from ..spec_decode.draft_model import DraftModelProposer
from ..tables import render_table
from .device import WEIGHT_DTYPES

# (metric, summary key, statistic): what `validate` compares.
COMPARED = (
    ("throughput", "output_token_throughput", None),
    ("request_throughput", "request_throughput", None),
    ("ttft_mean", "ttft_s", "mean"),
    ("ttft_p50", "ttft_s", "p50"),
    ("ttft_p90", "ttft_s", "p90"),
    ("tpot_mean", "tpot_s", "mean"),
    ("tpot_p50", "tpot_s", "p50"),
    ("tpot_p90", "tpot_s", "p90"),
    ("e2e_mean", "e2e_s", "mean"),
    ("e2e_p90", "e2e_s", "p90"),
)

Comparison = dict[str, dict[str, float | bool | None]]  # metric -> measured, predicted, error, informative
ARRIVAL_BOUND = ("throughput", "request_throughput")
"""Metrics an open-loop run fixes by its arrivals: below capacity both sides finish requests as fast as they
arrive, so their agreement proves nothing; only a saturated run (offline, or one the engine fell behind) tests
them."""


def check_steps_timed_apart(llm: LLMEngine) -> None:
    """Raise ValueError if the engine overlaps its steps (async scheduling): calibrate and validate time each
    step alone, and there a step's wall time would be the next one's forward."""
    if llm.engine.overlaps_steps:
        raise ValueError("calibrate and validate time each step alone, and async scheduling overlaps a step with "
                         "the next one's scheduling: run them without --async-scheduling")


def run_real(llm: LLMEngine, requests: Iterable[Request], quiet: bool = False,
             steps: list[Observation] | None = None) -> list[RequestRecord]:
    """Replay requests at their arrival times (seconds from now) through the real engine's step loop; with
    `steps`, each step's shape and wall time is appended to it."""
    # popped from the end: the latest arrival first in the list, and among equal arrivals (an offline run's, all
    # at t=0) the first given last, so the engine admits them in the order the simulator does
    check_steps_timed_apart(llm)
    pending = sorted(requests, key=lambda r: r.arrival_time)[::-1]
    engine = llm.engine
    too_long = [r for r in pending if r.num_prompt_tokens + r.sampling_params.max_tokens > llm.model_config.max_model_len]
    if too_long:
        raise ValueError(
            f"{len(too_long)} of {len(pending)} requests exceed the model's context of {llm.model_config.max_model_len} "
            f"tokens (e.g. {too_long[0].num_prompt_tokens} + {too_long[0].sampling_params.max_tokens}); "
            "shorten --input-len / --output-len"
        )
    records: list[RequestRecord] = []
    seen = RUN_IN_THIS_PROCESS.copy()  # the kernels built before: a count new to them costs more (`step_shape`)
    lora = llm.executor.lora  # counts the adapter slot loads each step makes
    total = len(pending)
    t0 = time.perf_counter()
    clock0 = engine.now
    with Progress("running", total, enabled=not quiet) as progress:
        while pending or engine.has_unfinished():
            now = time.perf_counter() - t0
            while pending and pending[-1].arrival_time <= now:
                req = pending.pop()
                req.arrival_time += clock0
                engine.add_request(req)
            if not engine.has_unfinished():
                time.sleep(max(0.0, pending[-1].arrival_time - now))
                continue
            engine.now = max(engine.now, clock0 + now)  # idle gaps count: the engine's clock is the wall clock
            loads = lora.num_slot_loads if lora is not None else 0
            start = time.perf_counter()
            step = engine.step()
            if steps is not None and step.result is not None:
                loads = lora.num_slot_loads - loads if lora is not None else 0
                shape = step_shape(step.batch, engine.executor.attention, num_lora_loads=loads, seen=seen)
                steps.append(Observation(shape, time.perf_counter() - start))
            records += [RequestRecord.from_request(req) for req in step.finished]
            progress.update(len(records), f"{now:.0f} s")
    return records


def sim_setup(llm: LLMEngine, hardware: str, model_name: str,
              spec_acceptance: SpecAcceptance = SpecAcceptance()) -> SimSetup:
    """The simulator's twin of a real engine: same model shape, scheduler, cache size, adapter slots and
    speculative decoding (its drafts accepted as `spec_acceptance` says); calibrated hardware."""
    weight_dtype = WEIGHT_DTYPES[llm.model.dtype]
    kv = llm.scheduler.kv
    cache = CacheConfig(block_size=kv.block_size, num_blocks=kv.num_blocks, enable_prefix_caching=kv.enable_caching)
    cluster = ClusterConfig(model=model_name, hardware=hardware, weight_dtype=weight_dtype)
    lora = llm.lora_manager.config if llm.lora_manager is not None else LoRAConfig()
    spec = llm.speculator
    draft = spec.proposer.config if spec is not None and isinstance(spec.proposer, DraftModelProposer) else None
    return resolve(cluster, llm.scheduler.config, cache, model=replace(llm.model_config, name=model_name),
                   attention=llm.executor.attention, lora=lora, speculative=spec.config if spec else None,
                   spec_acceptance=spec_acceptance, draft_model=draft)


def is_offline(records: Sequence[RequestRecord]) -> bool:
    """Every request arrived at the same instant: the engine ran saturated, so throughput measures capacity."""
    return len({r.arrival_time for r in records}) <= 1


def is_saturated(records: Sequence[RequestRecord], keep_up: float = 0.9) -> bool:
    """The engine could not keep up, so its throughput measures capacity, not the arrival rate: an offline run,
    or one that finished requests at under `keep_up` x the rate they arrived (first arrival to last finish
    against first to last arrival)."""
    if is_offline(records):
        return True
    first = min(r.arrival_time for r in records)
    arrived = max(r.arrival_time for r in records) - first
    finished = max(r.finish_time for r in records) - first
    return arrived < keep_up * finished


def compare(measured: dict, predicted: dict, saturated: bool) -> Comparison:
    """Per metric: measured, predicted, relative error (predicted / measured - 1) and whether it tests the model.

    Latencies always do; throughput only in a `saturated` run (see ARRIVAL_BOUND).
    """
    out = {}
    for name, key, stat in COMPARED:
        m = measured[key] if stat is None else measured[key][stat]
        p = predicted[key] if stat is None else predicted[key][stat]
        err = None if m is None or p is None or m == 0 else p / m - 1
        out[name] = {"measured": m, "predicted": p, "error": err, "informative": saturated or name not in ARRIVAL_BOUND}
    return out


def per_request_mape(real: Sequence[RequestRecord], sim: Sequence[RequestRecord]) -> dict[str, float]:
    """Mean absolute percentage error of each request's TTFT and E2E, matched by request id."""
    by_id = {r.request_id: r for r in sim}
    pairs = [(r, by_id[r.request_id]) for r in real if r.request_id in by_id]
    out = {}
    for metric in ("ttft_s", "e2e_s"):
        m = np.array([getattr(a, metric) for a, _ in pairs])
        p = np.array([getattr(b, metric) for _, b in pairs])
        ok = m > 0
        out[metric.removesuffix("_s")] = float(np.mean(np.abs(p[ok] - m[ok]) / m[ok])) if ok.any() else float("nan")
    return out


@dataclass(frozen=True)
class StepCosts:
    """Some of a real run's steps: how many, their measured wall time and the profile's price of their shapes."""

    num: int
    measured_s: float
    priced_s: float

    @property
    def ratio(self) -> float:
        """Priced over measured: below 1, the steps ran slower than the cost model says (the model's error, or a
        machine slower than when calibrated); the rest of a run's error is the twin's scheduling and timing."""
        return self.priced_s / self.measured_s if self.measured_s else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"num": self.num, "measured_s": self.measured_s, "priced_s": self.priced_s,
                "priced_over_measured": self.ratio}


def step_costs(setup: SimSetup, steps: Sequence[Observation]) -> dict[str, StepCosts]:
    """`steps` priced by `setup`'s cost model, all together and split by whether a step computed prompt tokens."""
    priced = predict(setup.deployment, setup.efficiency, steps)
    measured = np.array([o.seconds for o in steps])
    prompt = np.array([o.shape.num_prefill_tokens > 0 for o in steps], dtype=bool)
    return {label: StepCosts(int(mask.sum()), float(measured[mask].sum()), float(priced[mask].sum()))
            for label, mask in (("all", np.ones(len(steps), dtype=bool)), ("with prompt tokens", prompt),
                                ("decode only", ~prompt))}


@dataclass
class Validation:
    """Real and simulated runs of one workload, side by side."""

    metrics: Comparison
    per_request_mape: dict[str, float]
    measured: dict
    """The real run's `metrics.summarize`."""
    predicted: dict
    """The simulated run's `metrics.summarize`."""
    real: list[RequestRecord]
    simulated: list[RequestRecord]
    step_costs: dict[str, StepCosts]
    """The real run's own steps priced by the profile: "all", "with prompt tokens" (what TTFT waits on) and
    "decode only" (what TPOT is made of)."""
    steps: list[Observation]
    """The real run's steps (shape and wall time), to refit or re-price offline."""


def validate(llm: LLMEngine, setup: SimSetup, requests: Callable[[], Iterable[Request]], slo: SLO | None = None,
             quiet: bool = False) -> Validation:
    """Run `requests()` (called once per side: the engine consumes its requests) on `llm` and on `setup`."""
    warm = RUN_IN_THIS_PROCESS.snapshot()  # the engine's kernels built before this run: the twin starts with them
    steps: list[Observation] = []
    real = run_real(llm, requests(), quiet=quiet, steps=steps)
    sim = simulate(replace(setup, warm_token_counts=warm), requests()).records
    measured, predicted = summarize(real, slo=slo), summarize(sim, slo=slo)
    metrics = compare(measured, predicted, saturated=is_saturated(real))
    return Validation(metrics, per_request_mape(real, sim), measured, predicted, real, sim, step_costs(setup, steps),
                      steps)


def format_comparison(rows: Comparison) -> str:
    """Measured, predicted and error of each metric as a table (latencies in ms), arrival-bound rows marked."""

    def cells(name: str, r: dict) -> list[str]:
        unit, suffix = (1.0, "") if "throughput" in name else (1000.0, " ms")

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x * unit:.1f}{suffix}"

        error = "-" if r["error"] is None else f"{r['error']:+.1%}"
        return [name, fmt(r["measured"]), fmt(r["predicted"]), error if r["informative"] else f"({error})"]

    table = render_table([cells(name, r) for name, r in rows.items()], ("<20", ">12", ">12", ">8"),
                         ["metric", "measured", "predicted", "error"])
    if all(r["informative"] for r in rows.values()):
        return table
    return (table + "\n(error): set by the arrival rate in this open-loop run, not a test of the cost model; "
            "latency medians are, and so is throughput in a saturated run (no --rate, or more than the engine serves)")


def step_cost_line(result: Validation) -> str:
    """Where an error comes from: the step-cost model (its price of the real run's own steps) or the rest."""
    parts = ", ".join(f"{label} {c.ratio:.2f}x ({c.num})" for label, c in result.step_costs.items() if c.num)
    return (f"the real run's own steps, priced / measured: {parts} (below 1: they ran slower than priced, by the "
            f"cost model's error or a machine slower than at calibration; the rest of an error is the twin's "
            f"scheduling)")

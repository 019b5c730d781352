"""`run --estimate`: the job through its simulated twin, with output lengths and step costs from evidence.

Without evidence every request is assumed to generate its max_tokens (an
upper bound: real outputs stop at EOS). Evidence comes from a stratified
sample of the job run on the real engine first (`--sample K`, whose results
count as done) and from an earlier run's measurements (`--profile-from`):
completions teach a censored length model per prompt-length bucket; steps
measured on the estimate's own device scale its cost model. The job is then
simulated under several draws of the length model, giving a p10-p90 range.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.input_processor import generation_defaults, read_generation_config
from ..outputs import RequestOutput
from ..sim.calibration import predict
from ..sim.cost_model import Efficiency
from ..sim.router import RouterConfig
from ..sim.simulate import SimSetup
from ..sim.speculation import SpecAcceptance, acceptance_rate_from_counts
from ..tokenizer import load_tokenizer
from .batch_io import BatchRequest, Done, Entry, ResultWriter, check_unique_ids, detect_format, scan_output
from .lengths import LengthDistribution, LengthModel
from .measurements import Measurements, device_label, fit_step_costs
from .openai_format import job_context
from .runner import JobConfig, Recorder, Summary, feed, plan
from .setup import RunSetup, default_device, model_shape
from .twin import simulate_entries

if TYPE_CHECKING:
    from .engine_backend import EngineBackend

LOCAL_CPU = "cpu-local"
"""The catalog's placeholder for this machine's CPU: a sample run here gives it this CPU's step costs."""


@dataclass(frozen=True)
class EstimateConfig:
    """How an estimate learns from evidence and how wide it reports."""

    sample: int = 0
    """Requests run on the real engine first (stratified by prompt length) to learn output lengths and, when the
    estimate is for this machine, its step costs; 0: assume every request generates its max_tokens."""
    num_buckets: int = 3
    """Prompt-length buckets (at the job's quantiles) of the output-length model."""
    min_bucket_samples: int = 4
    """A bucket with fewer observed completions uses all buckets' lengths pooled."""
    num_draws: int = 10
    """Simulations of the job under bootstrap draws of the length model; the range is their p10-p90."""
    fit_step_costs: bool = True
    """Scale the profile's step costs to steps measured on its device by an earlier full run (--profile-from), or
    by the sample when the profile is the uncalibrated cpu-local placeholder (False: learn output lengths only).
    A calibrated profile is not scaled to a sample: its few small batches misled by -33% and +48%."""
    warmup_steps: int = 2
    """First measured steps of each run left out of the step-cost fit (first touches of weights and kernels)."""
    eta_every: int = 16
    """During a run, the ETA re-simulates the unfinished requests after this many more completions."""
    eta_max_overhead: float = 0.02
    """Largest fraction of a run's wall time its ETA re-simulations may take (a long job's twin is not free);
    past it the ETA counts down until the run catches up."""

    def __post_init__(self) -> None:
        if self.sample < 0:
            raise ValueError(f"--sample must be >= 0, got {self.sample}")
        for name in ("num_buckets", "min_bucket_samples", "num_draws", "eta_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.eta_max_overhead <= 1:
            raise ValueError(f"eta_max_overhead must be in (0, 1], got {self.eta_max_overhead}")


@dataclass
class JobPlan:
    """The job's entries, tokenized and in run order, and what that took."""

    entries: list[Entry]
    prep_s: float

    @property
    def requests(self) -> list[BatchRequest]:
        return [e for e in self.entries if isinstance(e, BatchRequest)]


def plan_job(input_path: str, done: Done, setup: RunSetup, config: JobConfig) -> JobPlan:
    """Read, tokenize and order what the job has left to run, as the real run will (no model loaded)."""
    fmt = detect_format(input_path)
    shape = model_shape(setup.model)
    generation = read_generation_config(Path(setup.model) if Path(setup.model).is_dir() else None)
    context = job_context(setup.model, config, load_tokenizer(setup.model), shape.max_model_len, shape.vocab_size,
                          generation_defaults(generation), generation.get("max_new_tokens"))
    t = time.perf_counter()
    entries = list(plan(input_path, fmt, done, context, config, setup.block_size))
    return JobPlan(entries, time.perf_counter() - t)


@dataclass
class Evidence:
    """What the twin takes from measurements: a length model, the cost model's factors, per-request loop cost."""

    lengths: LengthModel | None
    efficiency: Efficiency
    overhead_s: float
    """Wall time per request outside model steps (tokenizing, admitting, writing), added to simulated time."""

    @classmethod
    def of(cls, sim: SimSetup, lengths_from: Sequence[Measurements], steps_from: Sequence[Measurements],
           plan: JobPlan, est: EstimateConfig, host_from: Sequence[Measurements] | None = None) -> Evidence:
        """Lengths from every record; from records of the sim's own device and dtype, step costs from `steps_from`
        (full runs) and the per-request loop cost from `host_from` (default `steps_from`)."""
        completions = [c for m in lengths_from for c in m.completions]
        model = LengthModel(completions, [len(r.prompt_token_ids) for r in plan.requests], est.num_buckets,
                            est.min_bucket_samples) if completions else None
        efficiency = sim.efficiency
        host_from = steps_from if host_from is None else host_from
        if steps_from:
            steps = [o for m in steps_from for o in m.steps[est.warmup_steps:]]
            efficiency = fit_step_costs(sim.deployment, efficiency, steps)

        overhead = reduce(Measurements.merged, host_from).loop_overhead_s if host_from else 0.0
        return cls(model, efficiency, overhead)

    def lengths_for(self, requests: Sequence[BatchRequest], dists: list[LengthDistribution],
                    rng: np.random.Generator) -> dict[str, list[int]]:
        """A drawn output length for each completion of each request."""
        assert self.lengths is not None
        prompt_lens, limits, owners = [], [], []
        for r in requests:
            assert r.params is not None
            for _ in range(r.params.n):
                prompt_lens.append(len(r.prompt_token_ids))
                limits.append(r.params.max_tokens)
                owners.append(r.custom_id)
        out: dict[str, list[int]] = {}
        for cid, length in zip(owners, self.lengths.draw(prompt_lens, limits, dists, rng).tolist()):
            out.setdefault(cid, []).append(length)
        return out

    def simulate(self, entries: Sequence[Entry], sim: SimSetup, config: JobConfig, router: RouterConfig,
                 lengths: dict[str, list[int]] | None) -> Summary:
        summary = simulate_entries(entries, replace(sim, efficiency=self.efficiency), config, router, lengths)
        summary.wall_s += self.overhead_s * summary.num_requests / sim.cluster.replicas
        return summary


@dataclass
class Estimate:
    """The predicted job: the median draw's summary, the p10-p90 ranges, and what it rests on."""

    summary: Summary
    wall_s_range: tuple[float, float]
    output_tokens_range: tuple[float, float]
    info: dict[str, Any]
    measurements: Measurements | None
    """The sample's measurements (for `--json`, reusable with --profile-from)."""


def stratified_sample(requests: Sequence[BatchRequest], k: int, seed: int) -> list[BatchRequest]:
    """One request from each of k equal slices of the job sorted by prompt length, kept in run order."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_token_ids))
    rng = np.random.default_rng(seed)
    picks = sorted(int(rng.choice(group)) for group in np.array_split(np.array(order), k))
    return [requests[i] for i in picks]


def run_sample(chosen: list[BatchRequest], backend: EngineBackend, output_path: str | None, config: JobConfig,
               prep_s: float) -> tuple[Measurements, dict[str, list[int]], Summary]:
    """Run the sample on the real engine, writing its results to `output_path` (so the run skips them).

    Returns its measurements, each sampled request's output lengths, and its summary (speculative decoding's
    counters among them).
    """
    lengths: dict[str, list[int]] = {}
    with ResultWriter(output_path, config.fsync_every) if output_path else nullcontext() as writer:
        recorder = Recorder(writer, preserve_order=False, total=len(chosen))

        def emit(entry: Entry, out: RequestOutput | None) -> None:
            if out is not None:
                lengths[out.request_id] = [len(c.token_ids) for c in out.outputs]
            recorder.emit(entry, out)

        feed(backend, chosen, emit, config.max_inflight)
        summary = recorder.finish(backend.counters())
    record = backend.log.take()
    record.wall_s, record.num_requests = summary.wall_s + prep_s, len(chosen)
    return record, lengths, summary


class NothingToEstimate(ValueError):
    """Every request of the job is already in its output (or the job is empty)."""


def estimate_job(
    input_path: str, output_path: str | None, setup: RunSetup, hardware: str, config: JobConfig,
    est: EstimateConfig = EstimateConfig(), router: RouterConfig = RouterConfig(), profile_from: str | None = None,
    make_backend: Callable[[], EngineBackend] | None = None,
) -> Estimate:
    """Predict the job's requests not yet in `output_path` (all of them for a new job) on `hardware`.

    With `est.sample`, `make_backend()` runs the sample first; its results go to `output_path` when given.
    """
    total = check_unique_ids(input_path, detect_format(input_path))
    done = scan_output(output_path) if output_path else Done()
    sim = setup.sim_setup(hardware)
    target, dtype = device_label(sim.deployment.hardware), sim.deployment.weight_dtype
    prior = Measurements.load(profile_from) if profile_from else None
    if prior is not None:
        prior.check_target(target, dtype, f"--profile-from {profile_from}")
    job = plan_job(input_path, done, setup, config)
    requests = job.requests
    if not requests:
        raise NothingToEstimate(f"{input_path}: no requests to estimate"
                                + (f" ({total} already in {output_path})" if total else ""))
    if est.sample > len(requests):
        raise ValueError(f"--sample {est.sample} exceeds the job's {len(requests)} requests; give at most {len(requests)}")
    records = [prior] if prior is not None else []
    sampled: Measurements | None = None
    known: dict[str, list[int]] = {}
    spec_from = f"assumed ({SpecAcceptance.spec_acceptance_rate}, drafts always found; --sample K measures them)"
    if est.sample:
        assert make_backend is not None, "a sample needs the real engine"
        chosen = stratified_sample(requests, est.sample, config.seed)
        sampled, known, counters = run_sample(chosen, make_backend(), output_path, config,
                                              job.prep_s * len(chosen) / len(requests))
        records.append(sampled)
        if sim.speculative is not None and counters.spec_drafts:
            sim = replace(sim, spec_acceptance=SpecAcceptance(acceptance_rate_from_counts(
                counters.spec_drafts, counters.spec_draft_tokens, counters.spec_accepted_tokens),
                spec_draft_rate=counters.spec_drafts / counters.spec_proposals))
            spec_from = (f"the sample's {counters.spec_drafts} verifications of {counters.spec_proposals} lookups "
                         f"({counters.spec_accepted_tokens} of {counters.spec_draft_tokens} draft tokens accepted)")
        if sim.deployment.hardware.name == LOCAL_CPU and (setup.device or default_device()) == "cpu":
            target = sampled.device  # the placeholder stands for this CPU, which the sample just measured
    here = [m for m in records if (m.device, m.dtype) == (target, dtype)]
    placeholder = sim.deployment.hardware.name == LOCAL_CPU
    steps_from = [m for m in here if est.fit_step_costs and (m is prior or placeholder)]
    evidence = Evidence.of(sim, records, steps_from, job, est, host_from=here)
    if evidence.lengths is None:
        draws = [evidence.simulate(job.entries, sim, config, router, None)]
    else:
        lengths_model = evidence.lengths
        draws = []
        for d in range(est.num_draws):
            rng = np.random.default_rng([config.seed, d])
            lengths = {**evidence.lengths_for(requests, lengths_model.resample(rng), rng), **known}
            draws.append(evidence.simulate(job.entries, sim, config, router, lengths))
    walls = np.array([s.wall_s for s in draws])
    tokens = np.array([s.output_tokens for s in draws])
    median = draws[int(np.argmin(np.abs(walls - np.median(walls))))]
    p10, p90 = (float(x) for x in np.percentile(walls, [10, 90]))
    t10, t90 = (float(x) for x in np.percentile(tokens, [10, 90]))
    info = {
        "model": sim.deployment.model.name, "hardware": sim.deployment.hardware.name, "device": target,
        "weight_dtype": dtype, "quantization": sim.deployment.quantization, "scheduler": setup.scheduler, "max_num_batched_tokens": setup.max_num_batched_tokens,
        "max_num_seqs": setup.max_num_seqs, "num_gpus": setup.replicas * sim.deployment.num_gpus,
        "num_kv_blocks": sim.cache.num_blocks, "predicted_wall_s": median.wall_s,
        "predicted_wall_s_p10": p10, "predicted_wall_s_p90": p90,
        "output_tokens_p10": t10, "output_tokens_p90": t90, "num_draws": len(draws),
        "time_scale": evidence.efficiency.time_scale,
        "sequence_overhead_s": evidence.efficiency.sequence_overhead_s,
        "steps_measured": sum(len(m.steps[est.warmup_steps:]) for m in steps_from),
        "loop_overhead_s_per_request": evidence.overhead_s,
        "assumes": _assumption(evidence, est),
    }
    if sim.speculative is not None:
        info["spec_acceptance_rate"] = sim.spec_acceptance.spec_acceptance_rate
        info["spec_draft_rate"] = sim.spec_acceptance.spec_draft_rate
        info["spec_acceptance_from"] = spec_from
    if sampled is not None:
        info["sample"] = {"num_requests": sampled.num_requests, "wall_s": sampled.wall_s,
                          "output_tokens": sum(c.length for c in sampled.completions),
                          "written_to": output_path}
        if any(m is sampled for m in here):  # a sanity check: the sample's steps measured over the profile's costs
            steps = sampled.steps[est.warmup_steps:]
            charged = predict(sim.deployment, sim.efficiency, steps).sum() if steps else 0.0
            info["sample"]["step_time_ratio"] = sum(o.seconds for o in steps) / charged if charged else None
    return Estimate(median, (p10, p90), (t10, t90), info, sampled)


def _assumption(evidence: Evidence, est: EstimateConfig) -> str:
    if evidence.lengths is None:
        return "every request generates its max_tokens: an upper bound (--sample K learns real output lengths)"
    obs = evidence.lengths.observations
    capped = sum(c.censored for c in obs)
    return (f"output lengths learned from {len(obs)} completions ({capped} stopped by max_tokens), "
            f"{est.num_buckets} prompt-length buckets; range p10-p90 over {est.num_draws} draws")

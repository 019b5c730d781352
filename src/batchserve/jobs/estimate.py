"""`run --estimate`: the job through its simulated twin, with output lengths and step costs from evidence.

Without evidence every request is assumed to generate its max_tokens (an
upper bound: real outputs stop at EOS). Evidence comes from a stratified
sample of the job run on the real engine first (`--sample K`, drawn across the
job's prompt groups, whose results count as done) and from an earlier run's
measurements (`--profile-from`): completions teach a censored length model per
prompt group (`jobs.prompt_groups`: what the prompts ask, how long they are); steps
measured on the estimate's own device scale its cost model. With `probe_steps`,
a probe of a few decode steps as wide as the job's then rescales the costs to
what this machine does now at the job's batch width. The job is then
simulated under several draws of the length model, giving a p10-p90 range.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import reduce
from itertools import cycle, islice
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.input_processor import generation_defaults, read_generation_config
from ..outputs import RequestOutput
from ..sim.calibration import Observation, predict
from ..sim.cost_model import Efficiency
from ..sim.router import RouterConfig
from ..sim.simulate import SimSetup
from ..sim.speculation import SpecAcceptance, acceptance_rate_from_counts
from ..tokenizer import load_tokenizer
from .batch_io import BatchRequest, Done, Entry, ResultWriter, check_unique_ids, detect_format, scan_output
from .lengths import Completion, LengthDistribution, LengthModel, sample_size_for
from .measurements import Measurements, device_label, fit_step_costs
from .openai_format import job_context
from .prompt_groups import GroupingConfig, prompt_features, prompt_groups
from .runner import JobConfig, Recorder, Summary, feed, plan
from .setup import RunSetup, default_device
from .twin import simulate_entries

if TYPE_CHECKING:
    from .engine_backend import EngineBackend

LOCAL_CPU = "cpu-local"
"""The catalog's placeholder for this machine's CPU: a sample run here gives it this CPU's step costs."""


@dataclass(frozen=True)
class EstimateConfig:
    """How an estimate learns from evidence and how wide it reports."""

    sample: int = 0
    """Requests run on the real engine first (stratified by prompt group and length) to learn output lengths and,
    when the estimate is for this machine, its step costs; 0: assume every request generates its max_tokens."""
    samples_per_group: int = GroupingConfig.samples_per_group
    """The job's prompts are grouped (by what they ask and how long they are) for the sample and the output-length
    model: one group per this many sampled (or earlier observed) requests, so each group's lengths rest on a few of
    its own (`jobs.prompt_groups`)."""
    max_groups: int = GroupingConfig.max_groups
    """At most this many prompt groups."""
    length_prior_weight: float = 0.25
    """Pseudo-completions the output-length prior counts for (log-uniform lengths up to twice max_tokens; see
    `jobs.lengths`), against `length_concentration` per observed completion."""
    group_prior_weight: float = 1.0
    """Pseudo-completions each prompt group borrows from all groups' lengths pooled."""
    length_concentration: float = 0.5
    """Dirichlet weight of each observed completion in the length posterior (1: the Bayesian bootstrap, too
    narrow for a few completions; 1/2 covers about 80% of synthetic jobs sampled at 5% of 200)."""
    num_length_draws: int = 400
    """Posterior predictive draws of every request's output length; the output-token range is their p10-p90."""
    num_draws: int = 11
    """Simulations of the job, at evenly spaced quantiles of the length draws' output tokens (odd: the middle one
    is at the median, and its summary is the estimate's)."""
    step_cost_error: float = 0.12
    """The step-cost model's error on a whole job (one sigma of log(actual / priced)): the wall-time range spreads
    each simulation by it. 0.12: the RMS over 12 SmolLM2 jobs whose own steps a calibrated profile priced on this
    project's CPU VMs, fp32 and bf16, two CPU kinds (priced / measured 0.84-1.20x; bench/RESULTS.md, sessions 8,
    12 and 13)."""
    placeholder_step_cost_error: float = 0.30
    """`step_cost_error` where the profile is the uncalibrated cpu-local placeholder, scaled to a sample's steps
    (or not at all) rather than to an earlier run's: 0.30, the RMS of log(actual / estimated) over the 9 SmolLM2
    jobs estimated that way in session 18 (160-request jobs -33%..+41%, the README's job -8%..0%; bench/RESULTS.md).
    A sample's few small batches cannot show what the job's wide ones cost; `calibrate` can."""
    probed_step_cost_error: float = 0.11
    """`placeholder_step_cost_error` once a probe has scaled the placeholder to steps as wide as the job's: 0.11,
    the RMS of log(priced / measured) of the jobs' own steps at the estimates' costs over the 29 real SmolLM2 jobs
    estimated that way in sessions 29-31 (160- to 1,440-request jobs, fp32 and bf16, 0.77-1.23x, mean of the logs
    -0.02; without the probe's scale 0.17 and +0.11; bench/RESULTS.md). Most of it is the VM's speed between the
    probe and the run."""
    fit_step_costs: bool = True
    """Scale the profile's step costs to steps measured on its device by an earlier full run (--profile-from), or
    by the sample when the profile is the uncalibrated cpu-local placeholder (False: learn output lengths only).
    A calibrated profile is not scaled to a sample: its few small batches misled by -33% and +48%."""
    warmup_steps: int = 2
    """First measured steps of each run left out of the step-cost fit (first touches of weights and kernels)."""
    probe_steps: int | None = None
    """After a sample on the estimate's device, decode steps as wide as the job's (min(max_num_seqs, its
    requests)) run on throwaway copies of the sampled requests, and the step costs are scaled by what those steps
    took over what they are priced at; 0: no probe. None: 8 where the costs are the cpu-local placeholder's fitted
    to the sample, 0 elsewhere (a calibrated profile priced the job's widths on this machine already). A sample's
    1-8-row steps cannot show what the wide ones that carry a job cost, nor a calibration how fast the machine runs
    now. Each copy starts from the middle of its sampled completion (the context a job's decode rows average); those
    tokens are in the prefix cache from the sample, so the probe computes little more than its decodes. Its time is
    reported apart from the job's (`info["probe"]`).
    On three real SmolLM2 jobs on the cpp attention backend (bench/RESULTS.md, session 28) the placeholder scaled
    to the sample alone priced the jobs' own steps at 1.24-1.56x what they took (the kernel's wide steps run
    relatively faster than its narrow ones) and missed the wall time by +21% to +53%; with 8 probe steps the misses
    were -24% to +13%, the larger two from the sample's output lengths, for 1.8-6.9 s of probing (session 29, by
    default: fp32 +3.5%, +13.0%, -23.0%; bf16 +9.3%, -3.0%, +0.5%; all six inside p10-p90). On the torch
    backend (sessions 26-27) the probe priced the steps about as well as the sample alone: this VM's speed drifts
    by up to 1.4x within a minute, and a probe of a few steps carries the moment it measured. 4 steps left one or
    two to measure."""
    target_token_error: float = 0.10
    """With a sample, the output-token p10-p90 half-width (relative to its median) the estimate tells how to reach
    when its sample leaves the range wider: `info["sample_for_target"]`, the sample size that would narrow it to
    about this (never more than the job). The sample's lengths bound an estimate's accuracy: a 5% sample (24) of
    480-request SmolLM2 jobs put a chat job's output tokens at 0.86-1.12x the real (its lengths vary by 0.66 of
    their mean; +-10% at p10-p90 needs about 70), a long-generation job's at 1.00x (0.17) (bench/RESULTS.md,
    session 30)."""
    eta_every: int = 16
    """During a run, the ETA re-simulates the unfinished requests after this many more completions."""
    eta_max_overhead: float = 0.02
    """Largest fraction of a run's wall time its ETA re-simulations may take (a long job's twin is not free);
    past it the ETA counts down until the run catches up."""

    def __post_init__(self) -> None:
        if self.sample < 0:
            raise ValueError(f"--sample must be >= 0, got {self.sample}")
        for name in ("samples_per_group", "max_groups", "num_length_draws", "num_draws", "eta_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.length_concentration <= 0:
            raise ValueError(f"length_concentration must be > 0, got {self.length_concentration}")
        for name in ("length_prior_weight", "group_prior_weight", "step_cost_error", "placeholder_step_cost_error",
                     "probed_step_cost_error", "warmup_steps", "probe_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.target_token_error <= 0:
            raise ValueError(f"target_token_error must be > 0, got {self.target_token_error}")
        if not 0 < self.eta_max_overhead <= 1:
            raise ValueError(f"eta_max_overhead must be in (0, 1], got {self.eta_max_overhead}")

    @property
    def grouping(self) -> GroupingConfig:
        """How the job's prompts are grouped (the rest of `GroupingConfig` at its defaults)."""
        return GroupingConfig(samples_per_group=self.samples_per_group, max_groups=self.max_groups)


@dataclass
class JobPlan:
    """The job's entries, tokenized and in run order, and what that took."""

    entries: list[Entry]
    prep_s: float
    _features: np.ndarray | None = field(default=None, repr=False)
    _groups: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def requests(self) -> list[BatchRequest]:
        return [e for e in self.entries if isinstance(e, BatchRequest)]

    def groups(self, num_groups: int, config: GroupingConfig) -> np.ndarray:
        """Each request's prompt group (in `requests` order); prompts are described once (only once more than one
        group is asked for), grouped once per count."""
        if num_groups <= 1:
            return np.zeros(len(self.requests), dtype=np.int64)
        if num_groups not in self._groups:
            if self._features is None:
                self._features = prompt_features([r.prompt_token_ids for r in self.requests], config)
            self._groups[num_groups] = prompt_groups(self._features, num_groups, config)
        return self._groups[num_groups]

    def sample(self, k: int, config: GroupingConfig, seed: int, seen: int = 0) -> list[BatchRequest]:
        """An estimate's sample of k requests, stratified by the groups the length model will use (`seen`: the
        requests an earlier record already observed)."""
        return stratified_sample(self.requests, self.groups(config.num_groups(k + seen), config), k, seed)

    def observed(self, completions: Sequence[Completion]) -> list[int | None]:
        """Each completion's request (its index in `requests`), where it is one of this job's: the same custom_id
        and prompt length; None for another job's."""
        requests = self.requests
        index = {r.custom_id: i for i, r in enumerate(requests)}
        found = [index.get(c.custom_id) if c.custom_id is not None else None for c in completions]
        return [i if i is not None and len(requests[i].prompt_token_ids) == c.prompt_len else None
                for i, c in zip(found, completions)]


def plan_job(input_path: str, done: Done, setup: RunSetup, config: JobConfig) -> JobPlan:
    """Read, tokenize and order what the job has left to run, as the real run will (no model loaded)."""
    fmt = detect_format(input_path)
    shape = setup.shape()
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
    group_of: dict[str, int] = field(default_factory=dict)
    """Each of the job's requests' prompt group in the length model (by custom_id)."""

    @classmethod
    def of(cls, sim: SimSetup, lengths_from: Sequence[Measurements], steps_from: Sequence[Measurements],
           plan: JobPlan, est: EstimateConfig, host_from: Sequence[Measurements] | None = None) -> Evidence:
        """Lengths from every record; from records of the sim's own device and dtype, step costs from `steps_from`
        (full runs) and the per-request loop cost from `host_from` (default `steps_from`)."""
        completions = [c for m in lengths_from for c in m.completions]
        observed = plan.observed(completions)
        num_groups = est.grouping.num_groups(len({i for i in observed if i is not None}))
        groups = plan.groups(num_groups, est.grouping)
        model = LengthModel(completions, [-1 if i is None else int(groups[i]) for i in observed], num_groups,
                            est.length_prior_weight, est.group_prior_weight,
                            est.length_concentration) if completions else None
        group_of = {r.custom_id: int(g) for r, g in zip(plan.requests, groups)}
        efficiency = sim.efficiency
        host_from = steps_from if host_from is None else host_from
        if steps_from:
            steps = [o for m in steps_from for o in m.steps[est.warmup_steps:]]
            efficiency = fit_step_costs(sim.deployment, efficiency, steps)

        overhead = reduce(Measurements.merged, host_from).loop_overhead_s if host_from else 0.0
        return cls(model, efficiency, overhead, group_of)

    def rescaled(self, sim: SimSetup, steps: Sequence[Observation]) -> Evidence:
        """These costs scaled as a whole so that `steps` cost what they took (unchanged with no steps)."""
        ratio = measured_over_priced(sim, self.efficiency, steps)
        if ratio is None:
            return self
        return replace(self, efficiency=replace(self.efficiency, time_scale=self.efficiency.time_scale * ratio))

    def lengths_for(self, requests: Sequence[BatchRequest], rng: np.random.Generator,
                    dists: list[LengthDistribution] | None = None) -> dict[str, list[int]]:
        """An output length for each completion of each request: from `dists` (one per group, then the pooled), or
        by default a posterior predictive draw."""
        assert self.lengths is not None
        slots = self.slots(requests)
        drawn = self.lengths.predict(slots.groups, slots.limits, rng) if dists is None else \
            self.lengths.draw(slots.groups, slots.limits, dists, rng)
        out: dict[str, list[int]] = {}
        for cid, length in zip(slots.owners, drawn.tolist()):
            out.setdefault(cid, []).append(length)
        return out

    def slots(self, requests: Sequence[BatchRequest]) -> _Slots:
        """Every completion `requests` ask for: its prompt group (-1, the pooled lengths, for one not grouped), its
        max_tokens and its request's id."""
        out = _Slots([], [], [])
        for r in requests:
            assert r.params is not None
            for _ in range(r.params.n):
                out.groups.append(self.group_of.get(r.custom_id, -1))
                out.limits.append(r.params.max_tokens)
                out.owners.append(r.custom_id)
        return out

    def simulate(self, entries: Sequence[Entry], sim: SimSetup, config: JobConfig, router: RouterConfig,
                 lengths: dict[str, list[int]] | None) -> Summary:
        summary = simulate_entries(entries, replace(sim, efficiency=self.efficiency), config, router, lengths)
        summary.wall_s += self.overhead_s * summary.num_requests / sim.cluster.replicas
        return summary


@dataclass
class Estimate:
    """The predicted job: the summary of the simulation at the median output tokens, the p10-p90 ranges, and
    what it rests on."""

    summary: Summary
    wall_s_range: tuple[float, float]
    output_tokens_range: tuple[float, float]
    info: dict[str, Any]
    measurements: Measurements | None
    """The sample's measurements (for `--json`, reusable with --profile-from)."""


@dataclass
class _Slots:
    """Every completion a set of requests asks for: its prompt group, its max_tokens and its request's id."""

    groups: list[int]
    limits: list[int]
    owners: list[str]


def stratified_sample(requests: Sequence[BatchRequest], groups: Sequence[int], k: int,
                      seed: int) -> list[BatchRequest]:
    """One request from each of k equal slices of the job sorted by prompt group, then prompt length (so each
    group gets its share of the sample, spread over its lengths), kept in run order."""
    order = np.lexsort((np.array([len(r.prompt_token_ids) for r in requests]), np.asarray(groups)))
    rng = np.random.default_rng(seed)
    picks = sorted(int(rng.choice(group)) for group in np.array_split(np.array(order), k))
    return [requests[i] for i in picks]


def measured_over_priced(sim: SimSetup, efficiency: Efficiency, steps: Sequence[Observation]) -> float | None:
    """What `steps` took over what `efficiency` prices them at on the sim's deployment; None with nothing priced."""
    priced = predict(sim.deployment, efficiency, steps).sum() if steps else 0.0
    return float(sum(o.seconds for o in steps) / priced) if priced else None


def run_sample(chosen: list[BatchRequest], backend: EngineBackend, output_path: str | None, config: JobConfig,
               prep_s: float) -> tuple[Measurements, dict[str, list[list[int]]], Summary]:
    """Run the sample on the real engine, writing its results to `output_path` (so the run skips them).

    Returns its measurements, each sampled request's output token ids (a list per completion), and its summary
    (speculative decoding's counters among them).
    """
    outputs: dict[str, list[list[int]]] = {}
    with ResultWriter(output_path, config.fsync_every) if output_path else nullcontext() as writer:
        recorder = Recorder(writer, preserve_order=False, total=len(chosen))

        def emit(entry: Entry, out: RequestOutput | None) -> None:
            if out is not None:
                outputs[out.request_id] = [list(c.token_ids) for c in out.outputs]
            recorder.emit(entry, out)

        feed(backend, chosen, emit, config.max_inflight)
        summary = recorder.finish(backend.counters())
    record = backend.log.take()
    record.wall_s, record.num_requests = summary.wall_s + prep_s, len(chosen)
    return record, outputs, summary


PLACEHOLDER_PROBE_STEPS = 8
"""`EstimateConfig.probe_steps` where None leaves it to the estimate and the costs are the placeholder's fitted to
the sample."""
PROBE_ID = "batchserve-probe-{}"
"""The probe's requests' ids in the engine: they are never written."""


def run_probe(backend: EngineBackend, requests: Sequence[BatchRequest], outputs: Mapping[str, list[list[int]]],
              width: int, est: EstimateConfig) -> tuple[list[Observation], float]:
    """`width` throwaway copies of `requests` (cycling through them; one completion of `probe_steps` + 1 tokens,
    EOS ignored) run together on the real engine, each from the middle of its sampled completion (its prompt, then
    the first half of `outputs`' tokens for it): a job's decode rows average that context, and the sample left
    those tokens' blocks in the prefix cache. Returns its pure decode steps of the most rows it ran at once
    (`width`, unless the KV cache holds fewer, as it would in the job), past the first `warmup_steps`, and its wall
    time."""
    probes = []
    for i, r in enumerate(islice(cycle(requests), width)):
        generated = outputs.get(r.custom_id, [[]])[0]
        # the copy may reach no further than the request could (prompt + max_tokens, which fits max_model_len)
        half = max(0, min(len(generated) // 2, r.params.max_tokens - est.probe_steps - 1))
        probes.append(replace(r, custom_id=PROBE_ID.format(i), anchor=None, response=None,
                              prompt_token_ids=r.prompt_token_ids + generated[:half],
                              params=replace(r.params, n=1, max_tokens=est.probe_steps + 1, min_tokens=0,
                                             ignore_eos=True)))
    t = time.perf_counter()
    feed(backend, probes, lambda entry, out: None, width)
    wall = time.perf_counter() - t
    decodes = [o for o in backend.log.take().steps if not o.shape.num_prefill_tokens]
    widest = max((o.shape.num_decodes for o in decodes), default=0)
    return [o for o in decodes if o.shape.num_decodes == widest][est.warmup_steps:], wall


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
        if stands_for_this_cpu(sim, setup):  # the placeholder is this CPU, which a record names as its engine did
            import torch

            from ..calibration.device import device_name

            target = device_name(torch.device("cpu"))
        prior.check_target(target, dtype, sim.attention.backend, f"--profile-from {profile_from}")
    job = plan_job(input_path, done, setup, config)
    requests = job.requests
    if not requests:
        raise NothingToEstimate(f"{input_path}: no requests to estimate"
                                + (f" ({total} already in {output_path})" if total else ""))
    if est.sample > len(requests):
        raise ValueError(f"--sample {est.sample} exceeds the job's {len(requests)} requests; give at most {len(requests)}")
    records = [prior] if prior is not None else []
    sampled: Measurements | None = None
    peaks: tuple[float, float] | None = None
    """This CPU's (FLOP/s, bytes/s), measured after the sample when the placeholder stands for it."""
    generated: dict[str, list[list[int]]] = {}
    """The sampled requests' output token ids, a list per completion."""
    done_first: Summary | None = None
    """A sample written to the output is done: the run resumes after it, so the job is the sample, then the rest."""
    spec_from = f"assumed ({SpecAcceptance.spec_acceptance_rate}, drafts always found; --sample K measures them)"
    if est.sample:
        assert make_backend is not None, "a sample needs the real engine"
        seen = {i for i in job.observed(prior.completions) if i is not None} if prior is not None else set()
        chosen = job.sample(est.sample, est.grouping, config.seed, len(seen))
        backend = make_backend()
        sampled, generated, counters = run_sample(chosen, backend, output_path, config,
                                                  job.prep_s * len(chosen) / len(requests))
        records.append(sampled)
        if output_path:
            done_first = counters
        if sim.speculative is not None and counters.spec_drafts:
            sim = replace(sim, spec_acceptance=SpecAcceptance(acceptance_rate_from_counts(
                counters.spec_drafts, counters.spec_draft_tokens, counters.spec_accepted_tokens),
                spec_draft_rate=counters.spec_drafts / counters.spec_proposals))
            spec_from = (f"the sample's {counters.spec_drafts} verifications of {counters.spec_proposals} lookups "
                         f"({counters.spec_accepted_tokens} of {counters.spec_draft_tokens} draft tokens accepted)")
        if stands_for_this_cpu(sim, setup):
            target = sampled.device  # the placeholder stands for this CPU, which the sample just measured
            peaks = backend.peaks
            sim = with_peaks(sim, *peaks)
    here = [m for m in records if (m.device, m.dtype) == (target, dtype)]
    sampled_here = any(m is sampled for m in here)  # the sample ran on the device and dtype estimated for
    placeholder = sim.deployment.hardware.name == LOCAL_CPU
    steps_from = [m for m in here if est.fit_step_costs and (m is prior or placeholder)]
    # the placeholder's costs fitted to the job's own batch sizes (an earlier run) are as good as a calibration's
    fitted_to_a_run = any(m is prior for m in steps_from)
    sigma = est.placeholder_step_cost_error if placeholder and not fitted_to_a_run else est.step_cost_error
    evidence = Evidence.of(sim, records, steps_from, job, est, host_from=here)
    probe: dict[str, Any] | None = None
    probe_steps = est.probe_steps
    if probe_steps is None:
        probe_steps = PLACEHOLDER_PROBE_STEPS if placeholder and steps_from and not fitted_to_a_run else 0
    if probe_steps and est.fit_step_costs and sampled_here:
        width = min(setup.max_num_seqs, len(requests))
        steps, probe_s = run_probe(backend, chosen, generated, width, replace(est, probe_steps=probe_steps))
        scale = evidence.efficiency.time_scale
        evidence = evidence.rescaled(sim, steps)
        probe = {"width": steps[0].shape.num_decodes if steps else 0, "steps": len(steps), "wall_s": probe_s,
                 "time_scale_ratio": evidence.efficiency.time_scale / scale}
        if placeholder and steps and not fitted_to_a_run:
            sigma = est.probed_step_cost_error
    entries = job.entries
    if done_first is not None:
        sampled_ids = {r.custom_id for r in chosen}
        entries = [e for e in entries if not (isinstance(e, BatchRequest) and e.custom_id in sampled_ids)]
    if evidence.lengths is None:
        draws = [evidence.simulate(entries, sim, config, router, None)]
    else:
        known = {rid: [len(t) for t in outs] for rid, outs in generated.items()}  # the sample's output lengths
        draws, tokens = _length_draws(evidence, job, entries, sim, config, router, known, est)
    measured_s = 0.0  # the part of the job already run and written: the sample
    if done_first is not None:
        assert sampled is not None
        measured_s = sampled.wall_s  # with its share of the job's preparation
        first = replace(done_first, wall_s=measured_s)
        draws = [first.then(d) for d in draws]
    if evidence.lengths is None:
        tokens = np.array([draws[0].output_tokens])
    walls = np.array([s.wall_s for s in draws])
    median = draws[len(draws) // 2]  # the simulation at the median output tokens (draws come in token order)
    p10, p90 = (float(x) for x in np.percentile(
        measured_s + _with_cost_error(walls - measured_s, sigma), [10, 90]))
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
        "assumes": _assumption(evidence, est, sigma),
    }
    if sim.speculative is not None:
        info["spec_acceptance_rate"] = sim.spec_acceptance.spec_acceptance_rate
        info["spec_draft_rate"] = sim.spec_acceptance.spec_draft_rate
        info["spec_acceptance_from"] = spec_from
    if peaks is not None:
        info["peaks"] = {"flops": peaks[0], "memory_bandwidth": peaks[1]}
    if probe is not None:
        info["probe"] = probe
    if est.sample and evidence.lengths is not None:
        wider = sample_size_for(tokens, est.sample, len(requests), est.target_token_error, est.length_concentration)
        if wider is not None:
            info["sample_for_target"] = {"sample": wider, "target_token_error": est.target_token_error}
    if sampled is not None:
        info["sample"] = {"num_requests": sampled.num_requests, "wall_s": sampled.wall_s,
                          "output_tokens": sum(c.length for c in sampled.completions),
                          "written_to": output_path}
        if sampled_here:  # a sanity check: the sample's steps measured over the profile's costs
            info["sample"]["step_time_ratio"] = measured_over_priced(sim, sim.efficiency,
                                                                     sampled.steps[est.warmup_steps:])
    return Estimate(median, (p10, p90), (t10, t90), info, sampled)


def stands_for_this_cpu(sim: SimSetup, setup: RunSetup) -> bool:
    """Whether the sim's hardware is the cpu-local placeholder for a run on this machine's CPU."""
    return sim.deployment.hardware.name == LOCAL_CPU and (setup.device or default_device()) == "cpu"


def with_peaks(sim: SimSetup, flops: float, bandwidth: float) -> SimSetup:
    """The sim on its hardware with these measured peaks (FLOP/s in the compute dtype, memory bytes/s): on the
    placeholder, whose efficiency factors are fractions of measured peaks, this CPU's instead of one VM's."""
    hw = sim.deployment.hardware
    hw = replace(hw, peak_flops={**hw.peak_flops, sim.deployment.compute_dtype: flops}, memory_bandwidth=bandwidth)
    return replace(sim, deployment=replace(sim.deployment, hardware=hw))


def _length_draws(evidence: Evidence, job: JobPlan, entries: Sequence[Entry], sim: SimSetup, config: JobConfig,
                  router: RouterConfig, known: dict[str, list[int]],
                  est: EstimateConfig) -> tuple[list[Summary], np.ndarray]:
    """`entries` (the job, or what is left after its sample) simulated at evenly spaced quantiles of the job's
    output tokens over `est.num_length_draws` posterior predictive draws (stratified on what drives wall time
    most), and every draw's output tokens (the sample's known lengths included)."""
    assert evidence.lengths is not None
    unknown = [r for r in job.requests if r.custom_id not in known]
    slots = evidence.slots(unknown)

    def world(w: int) -> np.random.Generator:
        return np.random.default_rng([config.seed, w])

    known_tokens = sum(map(sum, known.values()))
    tokens = known_tokens + np.array([evidence.lengths.predict(slots.groups, slots.limits, world(w)).sum()
                                      for w in range(est.num_length_draws)])
    order = np.argsort(tokens, kind="stable")
    picks = order[((np.arange(est.num_draws) + 0.5) / est.num_draws * len(order)).astype(int)]
    draws = [evidence.simulate(entries, sim, config, router, {**evidence.lengths_for(unknown, world(int(w))),
                                                               **known}) for w in picks]
    return draws, tokens


def _with_cost_error(walls: np.ndarray, sigma: float, points: int = 64) -> np.ndarray:
    """Each simulated wall time spread by the step-cost model's log-normal error (at `points` normal quantiles):
    a batch job keeps the engine busy, so pricing its steps x% high makes it x% longer."""
    z = np.array([NormalDist().inv_cdf((j + 0.5) / points) for j in range(points)])
    return (walls[:, None] * np.exp(sigma * z)[None, :]).ravel()


def _assumption(evidence: Evidence, est: EstimateConfig, step_cost_error: float) -> str:
    if evidence.lengths is None:
        return "every request generates its max_tokens: an upper bound (--sample K learns real output lengths)"
    obs = evidence.lengths.observations
    capped = sum(c.censored for c in obs)
    groups = evidence.lengths.num_groups
    return (f"output lengths learned from {len(obs)} completions ({capped} stopped by max_tokens), "
            f"{groups} prompt group{'s' if groups > 1 else ''}; range p10-p90 over {est.num_length_draws} length "
            f"draws ({est.num_draws} simulated) and a {step_cost_error:.1%} step-cost error")

"""`run --estimate` is the run's twin: the same token work exactly, output lengths and step costs from evidence."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from jobfiles import completion, read_results, write_jsonl

from batchserve.calibration.device import device_name
from batchserve.engine.llm_engine import LLMEngine
from batchserve.jobs.batch_io import Done
from batchserve.jobs.engine_backend import EngineBackend, local_job
from batchserve.jobs.estimate import (
    EstimateConfig,
    Evidence,
    estimate_job,
    plan_job,
    run_probe,
    with_peaks,
)
from batchserve.jobs.eta import LiveEta
from batchserve.jobs.lengths import Completion
from batchserve.jobs.measurements import Measurements, fit_step_costs
from batchserve.jobs.prompt_groups import GroupingConfig
from batchserve.jobs.runner import JobConfig
from batchserve.jobs.setup import RunSetup
from batchserve.sim.calibration import predict
from batchserve.sim.hardware import get_hardware
from batchserve.sim.router import RouterConfig

SETUP = RunSetup(device="cpu", kv_cache_memory="200KiB", max_num_batched_tokens=128, max_num_seqs=16)


def backend(setup: RunSetup = SETUP) -> EngineBackend:
    return EngineBackend(LLMEngine(setup.model, **setup.engine_args()))


def this_machine_profile(tmp_path: Path) -> str:
    """A profile of this CPU as `calibrate` names it (the catalog placeholder's figures), so estimates target here."""
    hw = get_hardware("cpu-local").to_dict()
    hw.update(name="calibrated-cpu", description=f"{device_name(torch.device('cpu'))}, calibrated 2026-01-01")
    path = tmp_path / "here.json"
    path.write_text(json.dumps(hw))
    return str(path)


def test_twin_computes_the_prompt_and_output_tokens_the_run_computes(tmp_path):
    """Shared prefixes, n > 1 and a KV cache small enough to preempt: token counts agree exactly."""
    rng = random.Random(1)
    prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(100)) for _ in range(3)]
    rows = [completion(f"q{i}", rng.choice(prefixes) + f" question {i}?", max_tokens=rng.choice([8, 24, 40]),
                       n=rng.choice([1, 1, 3]), ignore_eos=True) for i in range(30)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    real_backend = backend()
    real = local_job(str(inp), str(tmp_path / "out.jsonl"), "tiny", SETUP.engine_args(), JobConfig(), True,
                     lambda: real_backend)
    assert real_backend.engine.stats().num_preemptions > 0
    est = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig()).summary
    assert (est.prompt_tokens, est.computed_prompt_tokens, est.output_tokens, est.prefix_cache_hit_rate) == (
        real.prompt_tokens, real.computed_prompt_tokens, real.output_tokens, real.prefix_cache_hit_rate)


def early_stop_job(num: int, seed: int = 0) -> list[dict]:
    """Outputs that end at EOS long before max_tokens=64, longer for longer prompts (as answers to longer
    questions are): min_tokens sets a floor per prompt, then a bias on EOS (id 257) ends it within a few tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(num):
        words = rng.choice([3, 12, 40])
        prompt = " ".join(rng.choice(["tea", "sky", "river", "stone"]) for _ in range(words))
        floor = words // 2 + rng.randint(0, 8)
        rows.append(completion(f"r{i}", prompt, max_tokens=64, min_tokens=floor, logit_bias={"257": 5}))
    return rows


def test_a_sample_learns_outputs_that_stop_early_and_its_results_count_as_done(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(60))
    config = JobConfig()
    full = local_job(str(inp), str(tmp_path / "full.jsonl"), "tiny", SETUP.engine_args(), config, True)
    assert full.output_tokens < 0.5 * 60 * 64  # EOS ends outputs far before max_tokens

    upper = estimate_job(str(inp), None, SETUP, "cpu-local", config)
    assert upper.summary.output_tokens == 60 * 64
    assert "max_tokens" in upper.info["assumes"] and "upper bound" in upper.info["assumes"]
    # one length world: its range is the step-cost model's log-normal error alone, exp(+-1.2816 sigma)
    sigma = EstimateConfig().step_cost_error
    narrow = estimate_job(str(inp), None, SETUP, "cpu-local", config, EstimateConfig(placeholder_step_cost_error=sigma))
    assert narrow.wall_s_range == pytest.approx(
        (narrow.summary.wall_s * math.exp(-1.2816 * sigma), narrow.summary.wall_s * math.exp(1.2816 * sigma)), rel=0.01)
    # the uncalibrated placeholder's own error is the wider one
    assert upper.wall_s_range[0] < narrow.wall_s_range[0] and upper.wall_s_range[1] > narrow.wall_s_range[1]

    out = tmp_path / "out.jsonl"
    # 20 of 60: a 10-request sample of this job averages 18.2 tokens against the job's 16.2 (+13%), and the
    # posterior median follows its evidence (+18%, the truth inside p10-p90); the length model's calibration over
    # many jobs is tests/jobs/test_length_coverage.py
    est = estimate_job(str(inp), str(out), SETUP, "cpu-local", config, EstimateConfig(sample=20),
                       make_backend=backend)
    assert abs(est.summary.output_tokens / full.output_tokens - 1) < 0.15
    lo, hi = est.output_tokens_range
    assert lo <= full.output_tokens <= hi and est.wall_s_range[0] <= est.summary.wall_s <= est.wall_s_range[1]
    assert "learned from 20 completions" in est.info["assumes"]
    assert len(out.read_text().splitlines()) == 20
    rest = local_job(str(inp), str(out), "tiny", SETUP.engine_args(), config, True)
    assert (rest.num_skipped, rest.num_ok) == (20, 40)
    assert read_results(out) == read_results(tmp_path / "full.jsonl")  # the sample wrote what the run would


def test_a_written_sample_is_the_jobs_first_part(tmp_path):
    """--sample with -o writes the sample's results, and the run resumes after them: the job's estimate is the
    sample's measured time plus the rest simulated. Without -o the run will redo the sample, so the estimate is the
    whole job simulated. (Every request generates 1 token, so every length draw is the same.)"""
    rows = [completion(f"r{i}", " ".join(["tea"] * (4 + i % 7)), max_tokens=1) for i in range(24)]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    est = estimate_job(str(inp), str(out), SETUP, "h100-sxm", JobConfig(), EstimateConfig(sample=4),
                       make_backend=backend)
    rest = estimate_job(str(inp), str(out), SETUP, "h100-sxm", JobConfig())  # what the run has left: 20
    assert rest.summary.num_requests == 20
    assert est.summary.wall_s == pytest.approx(est.info["sample"]["wall_s"] + rest.summary.wall_s)
    assert (est.summary.num_requests, est.summary.num_ok, est.summary.output_tokens) == (24, 24, 24)
    job = plan_job(str(inp), Done(), SETUP, JobConfig())
    assert est.summary.prompt_tokens == sum(len(r.prompt_token_ids) for r in job.requests)
    lo, hi = est.wall_s_range
    assert est.info["sample"]["wall_s"] < lo <= est.summary.wall_s <= hi  # the cost error spreads the rest only
    unwritten = estimate_job(str(inp), None, SETUP, "h100-sxm", JobConfig(), EstimateConfig(sample=4),
                             make_backend=backend)
    whole = estimate_job(str(inp), None, SETUP, "h100-sxm", JobConfig())
    assert unwritten.summary.wall_s == pytest.approx(whole.summary.wall_s)


def test_a_calibrated_profile_is_scaled_by_a_full_run_not_by_a_sample(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(24))
    here = this_machine_profile(tmp_path)
    sim = SETUP.sim_setup(here)
    est = estimate_job(str(inp), None, SETUP, here, JobConfig(), EstimateConfig(sample=6, warmup_steps=1),
                       make_backend=backend)
    steps = est.measurements.steps[1:]
    assert est.info["time_scale"] == 1.0 and est.info["steps_measured"] == 0  # the sample's small batches: no scale
    assert est.info["sequence_overhead_s"] == sim.efficiency.sequence_overhead_s
    charged = predict(sim.deployment, sim.efficiency, steps).sum()
    assert est.info["sample"]["step_time_ratio"] == pytest.approx(sum(o.seconds for o in steps) / charged)
    assert est.info["loop_overhead_s_per_request"] > 0  # host time per request still comes from the sample
    record = tmp_path / "run.json"  # as an earlier full run of the job would record it
    record.write_text(json.dumps({"measurements": est.measurements.to_dict()}))
    reused = estimate_job(str(inp), None, SETUP, here, JobConfig(), EstimateConfig(warmup_steps=1),
                          profile_from=str(record))
    fitted = fit_step_costs(sim.deployment, sim.efficiency, steps)
    assert reused.info["time_scale"] == pytest.approx(fitted.time_scale) != 1.0
    assert reused.info["sequence_overhead_s"] == pytest.approx(fitted.sequence_overhead_s)
    lengths_only = estimate_job(str(inp), None, SETUP, here, JobConfig(), EstimateConfig(fit_step_costs=False),
                                profile_from=str(record))
    assert lengths_only.info["time_scale"] == 1.0 and "learned from 6 completions" in lengths_only.info["assumes"]
    elsewhere = estimate_job(str(inp), None, SETUP, "h100-sxm", JobConfig(), EstimateConfig(sample=6),
                             make_backend=backend)
    assert elsewhere.info["time_scale"] == 1.0  # a sample here says nothing of an H100's step costs


def test_a_sample_scales_the_uncalibrated_cpu_placeholder(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(24))
    est = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig(),
                       EstimateConfig(sample=6, warmup_steps=1, probe_steps=0), make_backend=backend)
    peaks = est.info["peaks"]  # this CPU's, measured as calibrate measures them, in place of the placeholder's
    assert peaks["flops"] > 1e9 and peaks["memory_bandwidth"] > 1e8
    sim = with_peaks(SETUP.sim_setup("cpu-local"), peaks["flops"], peaks["memory_bandwidth"])
    assert sim.deployment.hardware.peak_flops["fp32"] == peaks["flops"] != get_hardware("cpu-local").peak_flops["fp32"]
    fitted = fit_step_costs(sim.deployment, sim.efficiency, est.measurements.steps[1:])
    assert est.info["time_scale"] == pytest.approx(fitted.time_scale, rel=1e-9) != 1.0
    # a scale fitted to a sample's few small batches: the range spreads by the placeholder's wider error
    assert f"{EstimateConfig().placeholder_step_cost_error:.1%} step-cost error" in est.info["assumes"]
    elsewhere = estimate_job(str(inp), None, SETUP, "h100-sxm", JobConfig(), EstimateConfig(sample=2),
                             make_backend=backend)
    assert "peaks" not in elsewhere.info and "probe" not in elsewhere.info  # a sample here measures nothing of an H100
    # by default a probe at the job's batch width rescales what the sample's small batches fitted
    probed = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig(), EstimateConfig(sample=6, warmup_steps=1),
                          make_backend=backend)
    assert probed.info["probe"]["steps"] > 0 and probed.info["probe"]["width"] > 1
    # scaled to steps as wide as the job's, the placeholder's costs spread by the probed error, not its own
    assert f"{EstimateConfig().probed_step_cost_error:.1%} step-cost error" in probed.info["assumes"]


def test_a_probed_placeholder_spreads_its_range_by_the_probed_step_cost_error(tmp_path):
    """Every request generates 1 token, so every length draw is the same and the range is the cost error alone:
    exp(+-1.2816 sigma) around the estimate, sigma the probed error after a probe, the placeholder's without."""
    inp = write_jsonl(tmp_path / "in.jsonl", [completion(f"r{i}", " ".join(["tea"] * (4 + i % 7)), max_tokens=1)
                                              for i in range(24)])
    for config, sigma in ((EstimateConfig(sample=4, probed_step_cost_error=0.05), 0.05),
                          (EstimateConfig(sample=4, probe_steps=0), EstimateConfig().placeholder_step_cost_error)):
        est = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig(), config, make_backend=backend)
        assert ("probe" in est.info) == (config.probe_steps is None)
        wall = est.summary.wall_s
        assert est.wall_s_range == pytest.approx((wall * math.exp(-1.2816 * sigma), wall * math.exp(1.2816 * sigma)),
                                                 rel=0.01)


def test_a_probe_of_the_jobs_batch_width_rescales_the_costs_to_what_its_steps_took(tmp_path):
    """After the sample, decode steps as wide as the job's run on throwaway copies of the sampled requests; the
    costs are scaled as a whole so that those steps are priced at exactly what they took. Nothing of it is written."""
    inp, out = write_jsonl(tmp_path / "in.jsonl", early_stop_job(24)), tmp_path / "out.jsonl"
    setup = dataclasses.replace(SETUP, kv_cache_memory="2MiB")  # room for the job's 16 rows at once
    here = this_machine_profile(tmp_path)
    sim = setup.sim_setup(here)
    est_config = EstimateConfig(sample=6, warmup_steps=1, probe_steps=8)
    job = plan_job(str(inp), Done(), setup, JobConfig())
    sampled = job.sample(6, est_config.grouping, JobConfig().seed)
    probe_backend = backend(setup)
    steps, wall = run_probe(probe_backend, sampled, {}, setup.max_num_seqs, est_config)
    # the prompts' prefill spans a few steps (128-token budget): the rows decode together once all are in
    assert 0 < len(steps) <= est_config.probe_steps - est_config.warmup_steps and wall > 0
    assert all(o.shape.num_decodes == setup.max_num_seqs and not o.shape.num_prefill_tokens for o in steps)
    assert probe_backend.num_unfinished() == 0
    # each copy decodes from the middle of its sampled completion: the prompt, then half the tokens generated
    # (at most what keeps it within the request's own max_tokens=64)
    generated = {r.custom_id: [list(range(7, 7 + n))] for r, n in zip(sampled, (20, 21, 0, 200, 3, 40))}
    halves = [min(len(generated[r.custom_id][0]) // 2, 64 - est_config.probe_steps - 1) for r in sampled]
    assert halves == [10, 10, 0, 55, 1, 20]
    mid, _ = run_probe(backend(setup), sampled, generated, setup.max_num_seqs, est_config)
    copies = [i % len(sampled) for i in range(setup.max_num_seqs)]  # the copies cycle through the sample
    prompts = sum(len(sampled[i].prompt_token_ids) for i in copies)
    longer = sum(halves[i] for i in copies)
    assert longer > setup.max_num_seqs * (est_config.probe_steps + 1)  # more than the probe's own tokens add
    for run, start in ((steps, prompts), (mid, prompts + longer)):  # a row's context: its start, then its decodes
        assert run and all(0 < o.shape.decode_context_tokens - start <= setup.max_num_seqs * est_config.probe_steps
                           for o in run)
    evidence = Evidence(None, sim.efficiency, 0.0).rescaled(sim, steps)
    assert predict(sim.deployment, evidence.efficiency, steps).sum() == pytest.approx(sum(o.seconds for o in steps))
    assert Evidence(None, sim.efficiency, 0.0).rescaled(sim, []).efficiency == sim.efficiency

    est = estimate_job(str(inp), str(out), setup, here, JobConfig(), est_config, make_backend=lambda: backend(setup))
    probe = est.info["probe"]
    # after the sample its copies' prompts are cached: their prefill takes fewer steps than on a fresh engine above
    assert probe["width"] == setup.max_num_seqs and len(steps) <= probe["steps"] <= est_config.probe_steps - 1
    assert probe["wall_s"] > 0
    assert est.info["time_scale"] == pytest.approx(probe["time_scale_ratio"]) != 1.0  # the calibration's scale: 1
    assert sorted(read_results(out)) == sorted(r.custom_id for r in sampled)  # the sample's lines only
    elsewhere = estimate_job(str(inp), None, setup, "h100-sxm", JobConfig(), EstimateConfig(sample=2, probe_steps=8),
                             make_backend=lambda: backend(setup))
    assert "probe" not in elsewhere.info  # steps here say nothing of an H100's
    assert "probe" not in estimate_job(str(inp), None, setup, here, JobConfig(), EstimateConfig(sample=2),
                                       make_backend=lambda: backend(setup)).info  # a calibrated profile: no probe


def test_a_run_on_this_cpu_scales_the_placeholder_through_profile_from(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(24))
    est = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig(), EstimateConfig(sample=6, warmup_steps=1),
                       make_backend=backend)
    record = tmp_path / "run.json"  # what a run of the job on this CPU records
    record.write_text(json.dumps({"measurements": est.measurements.to_dict()}))
    reused = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig(), EstimateConfig(warmup_steps=1),
                          profile_from=str(record))
    sim = SETUP.sim_setup("cpu-local")
    fitted = fit_step_costs(sim.deployment, sim.efficiency, est.measurements.steps[1:])
    assert reused.info["time_scale"] == pytest.approx(fitted.time_scale) != 1.0
    # fitted to the job's own batches, the placeholder is as good as a calibration: the narrower error
    assert f"{EstimateConfig().step_cost_error:.1%} step-cost error" in reused.info["assumes"]


def test_completions_of_the_jobs_own_requests_teach_their_groups_and_others_only_the_pool(tmp_path):
    """A record's completion is one of this job's requests where its custom_id and prompt length match one; a
    record of another job (other ids, or an id reused for another prompt) teaches only the job-wide lengths. One
    group per 4 of the job's requests observed."""
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(24))
    job = plan_job(str(inp), Done(), SETUP, JobConfig())
    requests = job.requests
    own = [Completion(len(r.prompt_token_ids), 64, 5, False, r.custom_id) for r in requests[:8]]
    elsewhere = [Completion(7, 64, 50, False, "other-1"), Completion(7, 64, 50, False, None),
                 Completion(len(requests[9].prompt_token_ids) + 1, 64, 50, False, requests[9].custom_id)]
    assert job.observed(own + elsewhere) == list(range(8)) + [None] * 3
    record = Measurements("cpu", "fp32", completions=own + elsewhere)
    sim = SETUP.sim_setup("cpu-local")
    evidence = Evidence.of(sim, [record], [], job, EstimateConfig())
    groups = job.groups(2, EstimateConfig().grouping)
    assert evidence.lengths.num_groups == 2 and sorted(set(groups.tolist())) == [0, 1]
    assert evidence.group_of == {r.custom_id: int(g) for r, g in zip(requests, groups)}
    # the own completions all stopped at 5: a group of them draws 5 but for the pool's share (50 there)
    expected = evidence.lengths.expected()
    drawn = evidence.lengths.draw([int(groups[0])] * 2000, [64] * 2000, expected, np.random.default_rng(0))
    pooled = evidence.lengths.draw([-1] * 2000, [64] * 2000, expected, np.random.default_rng(0))
    assert np.mean(drawn == 50) < np.mean(pooled == 50)


def test_the_estimates_grouping_knobs_reach_its_groups():
    """--samples-per-group and --max-groups are the estimate's own fields; the rest of the grouping keeps its
    defaults."""
    est = EstimateConfig(samples_per_group=2, max_groups=3)
    assert est.grouping == GroupingConfig(samples_per_group=2, max_groups=3)
    assert [est.grouping.num_groups(k) for k in (1, 4, 100)] == [1, 2, 3]
    for bad in ({"samples_per_group": 0}, {"max_groups": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EstimateConfig(**bad)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_eta_resimulates_the_unfinished_requests_every_n_completions_within_its_budget(tmp_path, monkeypatch):
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(12))
    calls: list[int] = []
    simulate = LiveEta._simulate

    def counted(self: LiveEta, elapsed: float) -> float:
        calls.append(len(self.pending))
        return simulate(self, elapsed)

    monkeypatch.setattr(LiveEta, "_simulate", counted)
    monkeypatch.setattr(sys, "stderr", Terminal())  # progress (and so the ETA) is drawn on terminals only
    etas: list[LiveEta] = []

    def run(name: str, quiet: bool, **est) -> None:
        def make_eta(b, done):
            etas.append(LiveEta(plan_job(str(inp), done, SETUP, JobConfig()), SETUP.sim_setup("cpu-local"),
                                JobConfig(), RouterConfig(), EstimateConfig(eta_every=4, **est), b.log))
            return etas[-1]

        calls.clear()
        local_job(str(inp), str(tmp_path / name), "tiny", SETUP.engine_args(), JobConfig(), quiet, make_eta=make_eta)

    run("quiet.jsonl", True)
    assert calls == []  # no progress line, no ETA asked
    run("every8.jsonl", False, eta_max_overhead=1.0)
    assert calls == [11, 7, 3]  # after the first completion, then every 4, on what is left
    assert etas[-1].seconds_left(1e9) == 0.0
    run("starved.jsonl", False, eta_max_overhead=1e-9)
    assert calls == [11]  # re-simulating may not cost more than its share of the run: it counts down instead


def test_the_twin_serves_the_runs_max_model_len(tmp_path):
    """Outputs without max_tokens run to --max-model-len, and prompts past it fail, in the run and its twin alike."""
    setup = dataclasses.replace(SETUP, max_model_len=96)
    rows = [{"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "tiny", "messages": [{"role": "user", "content": "y" * n}], "ignore_eos": True}}
            for n in (10, 30, 50, 100)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    real = local_job(str(inp), str(tmp_path / "out.jsonl"), "tiny", setup.engine_args(), JobConfig(), True,
                     lambda: backend(setup))
    est = estimate_job(str(inp), None, setup, "cpu-local", JobConfig()).summary
    assert (real.num_ok, real.num_failed, real.output_tokens) == (3, 1, 3 * 96 - real.prompt_tokens)
    assert (est.num_ok, est.num_failed, est.output_tokens) == (real.num_ok, real.num_failed, real.output_tokens)


def test_a_request_the_engine_refuses_fails_in_the_twin_whatever_length_it_draws(tmp_path):
    """351 prompt tokens + max_tokens 64 exceed the 400-token cache, though a drawn length of ~20 would fit."""
    inp = write_jsonl(tmp_path / "in.jsonl", early_stop_job(8) + [completion("big", "x" * 350, max_tokens=64)])
    est = estimate_job(str(inp), None, SETUP, "cpu-local", JobConfig(), EstimateConfig(sample=4), make_backend=backend)
    assert (est.summary.num_ok, est.summary.num_failed) == (8, 1)


def test_the_estimate_charges_each_grammar_constrained_row_per_step(tmp_path):
    """Constrained lines cost the profile's structured_overhead_s per row per step; free lines do not."""
    rows = [completion(f"r{i}", "x" * 20, max_tokens=30, ignore_eos=True, guided_regex="[a-z]{30}")
            for i in range(8)] + [completion(f"f{i}", "y" * 20, max_tokens=30, ignore_eos=True) for i in range(8)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    wall = {}
    for overhead in (0.0, 0.01):
        hw = get_hardware("cpu-local").to_dict()
        hw["efficiency"] = {**(hw.get("efficiency") or {}), "structured_overhead_s": overhead}
        profile = tmp_path / f"p{overhead}.json"
        profile.write_text(json.dumps(hw))
        wall[overhead] = estimate_job(str(inp), None, SETUP, str(profile), JobConfig()).summary.wall_s
    assert wall[0.01] - wall[0.0] == pytest.approx(8 * 30 * 0.01, rel=0.1)  # 8 rows sample 30 times each


def test_the_twin_runs_each_line_under_its_adapter(tmp_path):
    """One prompt under three adapters and the base model: the prefix cache never shares across adapters, in the
    run or in its twin, and one slot (max_loras=1) makes both wait for it; the token work agrees exactly."""
    from batchserve.lora.random_adapters import write_random_adapters

    setup = RunSetup(device="cpu", kv_cache_memory="200KiB", max_num_batched_tokens=128, max_num_seqs=16,
                     lora=(("enable_lora", True), ("max_lora_rank", 4), ("max_loras", 1)))
    probe = LLMEngine("tiny", **setup.engine_args()).lora_manager
    adapters = tuple(write_random_adapters(probe.shapes, len(probe.layers), tmp_path, 3, rank=4))
    shared = "a shared system prompt that fills a few blocks of the cache " * 2
    rows = [completion(f"q{i}", shared + f"question {i}", max_tokens=12, ignore_eos=True,
                       model=[a.lora_name for a in adapters][i % 4] if i % 4 < 3 else "tiny") for i in range(16)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    config = JobConfig(lora_modules=adapters)
    real = local_job(str(inp), str(tmp_path / "out.jsonl"), "tiny", setup.engine_args(), config, True)
    est = estimate_job(str(inp), None, setup, "cpu-local", config).summary
    assert (est.prompt_tokens, est.computed_prompt_tokens, est.output_tokens, est.prefix_cache_hit_rate) == (
        real.prompt_tokens, real.computed_prompt_tokens, real.output_tokens, real.prefix_cache_hit_rate)
    assert 0 < real.prefix_cache_hit_rate < 0.75  # reuse within an adapter only (4 groups of 4 share a prompt)


def test_the_estimate_simulates_speculation_at_the_acceptance_its_sample_measured(tmp_path):
    """With --speculative-config the twin speculates too: at an assumed alpha without a sample, at the one the
    sample's verifications imply with one; the token work stays the run's."""
    from dataclasses import replace

    from batchserve.sim.speculation import SpecAcceptance, acceptance_rate_from_counts

    spec_setup = replace(SETUP, speculative_config='{"method": "ngram", "num_speculative_tokens": 3}')
    rows = [completion(f"c{i}", "the cat sat on the mat. " * 6, max_tokens=24, ignore_eos=True) for i in range(12)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    assumed = estimate_job(str(inp), None, spec_setup, "cpu-local", JobConfig())
    assert assumed.info["spec_acceptance_rate"] == SpecAcceptance.spec_acceptance_rate
    assert assumed.info["spec_acceptance_from"].startswith("assumed")
    assert assumed.summary.output_tokens == 12 * 24
    sample_backend = backend(spec_setup)
    # no probe: its throwaway steps would speculate on the same engine after the sample's counters were read
    est = estimate_job(str(inp), None, spec_setup, "cpu-local", JobConfig(), EstimateConfig(sample=4, probe_steps=0),
                       make_backend=lambda: sample_backend)
    s = sample_backend.engine.stats()
    assert s.spec_decode_num_drafts > 0
    assert est.info["spec_acceptance_rate"] == acceptance_rate_from_counts(
        s.spec_decode_num_drafts, s.spec_decode_num_draft_tokens, s.spec_decode_num_accepted_tokens)
    assert est.info["spec_draft_rate"] == s.spec_decode_num_drafts / s.spec_decode_num_proposals
    assert f"{s.spec_decode_num_drafts} verifications" in est.info["spec_acceptance_from"]
    assert est.summary.output_tokens == 12 * 24

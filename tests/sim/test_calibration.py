"""Fitting the cost model to measured steps: recovery of known factors, error reports, profiles that carry them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from batchserve.attention_layout import AttentionConfig
from batchserve.config import CacheConfig, SchedulerConfig
from batchserve.sim.calibration import (
    Observation,
    fit_efficiency,
    fit_report,
    median_per_point,
    nelder_mead,
    new_shape_overhead,
    predict,
)
from batchserve.sim.cost_model import Efficiency, StepShape
from batchserve.sim.deployment import Deployment
from batchserve.sim.hardware import CatalogError, Hardware, get_hardware
from batchserve.sim.models import get_model
from batchserve.sim.simulate import ClusterConfig, hardware_efficiency, resolve

TRUE = Efficiency(gemm_flops=0.55, attention_flops=0.2, memory_bandwidth=0.45, step_overhead_s=0.004,
                  token_overhead_s=2e-5, sequence_overhead_s=3e-4, chunk_overhead_s=2e-3)


def _grid() -> list[StepShape]:
    """Prompt chunks with and without context, decode batches at several contexts, mixed steps."""
    shapes = [StepShape(n, n * (n + 1) / 2, n, 0, 0, 1, 1) for n in (16, 64, 256, 1024, 2048)]
    shapes += [StepShape(n, n * (c + (n + 1) / 2), c + n, 0, 0, 1, 1) for n in (32, 256) for c in (512, 2048)]
    shapes += [StepShape(0, 0, 0, b, b * c, b) for b in (1, 4, 16, 64, 128) for c in (16, 512, 2048)]
    shapes += [StepShape(256, 256 * 128.5, 256, b, b * 64, b, 1) for b in (4, 16)]
    shapes += [StepShape(512, 2 * 256 * 128.5, 512, b, b * 300, b + 1, 2) for b in (8, 32)]
    return shapes


def _timed(deployment: Deployment, efficiency: Efficiency, shapes: list[StepShape]) -> list[Observation]:
    """The steps as if measured: each takes exactly the time `efficiency` prices it at."""
    return [Observation(s, t) for s, t in zip(shapes, predict(deployment, efficiency, [Observation(s, 1) for s in shapes]))]


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return Deployment(get_model("qwen2.5-0.5b"), get_hardware("cpu-local"), weight_dtype="fp32")


@pytest.fixture(scope="module")
def clean_fit(deployment: Deployment) -> tuple[list[Observation], Efficiency]:
    """The grid timed exactly at `TRUE`, and the efficiency fitted to it (each fit takes a second)."""
    observations = _timed(deployment, TRUE, _grid())
    return observations, fit_efficiency(deployment, observations)


def test_fit_recovers_the_step_times_of_known_factors(deployment: Deployment, clean_fit) -> None:
    observations, fitted = clean_fit
    report = fit_report(deployment, fitted, observations)
    assert report["all"]["mape"] < 0.01
    assert set(report) == {"prefill", "decode", "mixed", "all"}
    assert fitted.gemm_flops == pytest.approx(TRUE.gemm_flops, rel=0.05)  # GEMMs dominate: identifiable
    # the starting point (defaults) predicts badly: the fit did the work
    assert fit_report(deployment, Efficiency(), observations)["all"]["mape"] > 0.3


def test_fit_averages_out_measurement_noise(deployment: Deployment) -> None:
    rng = np.random.default_rng(1)
    shapes = _grid() * 3
    clean = predict(deployment, TRUE, [Observation(s, 1) for s in shapes])
    noisy = [Observation(s, float(t * np.exp(rng.normal(0, 0.15)))) for s, t in zip(shapes, clean)]
    fitted = fit_efficiency(deployment, noisy)
    truth = [Observation(s, float(t)) for s, t in zip(shapes, clean)]
    assert abs(fit_report(deployment, fitted, truth)["all"]["total_time_error"]) < 0.05


def test_fit_shrugs_off_steps_a_busy_machine_slowed_down(deployment: Deployment) -> None:
    shapes = _grid() * 2
    clean = predict(deployment, TRUE, [Observation(s, 1) for s in shapes])
    slowed = [Observation(s, float(t * (4.0 if i % 9 == 0 else 1.0))) for i, (s, t) in enumerate(zip(shapes, clean))]
    fitted = fit_efficiency(deployment, slowed)
    truth = [Observation(s, float(t)) for s, t in zip(shapes, clean)]
    assert fit_report(deployment, fitted, truth)["all"]["mape"] < 0.05  # as if the slow steps were not there


def test_fit_needs_enough_steps(deployment: Deployment) -> None:
    with pytest.raises(ValueError, match="at least"):
        fit_efficiency(deployment, [Observation(StepShape(16, 136, 16, 0, 0, 1), 0.1)])


def test_nelder_mead_finds_a_quadratic_minimum() -> None:
    target = np.array([1.0, -2.0, 0.5])
    best = nelder_mead(lambda x: float(np.sum((x - target) ** 2) + 3), np.zeros(3))
    assert np.allclose(best, target, atol=1e-3)


def test_observations_round_trip_through_json() -> None:
    o = Observation(StepShape(32, 32 * 528.5, 544, 3, 900, 4, 1), 0.25)
    assert o.kind == "mixed"
    assert Observation.from_dict(json.loads(json.dumps(o.to_dict()))) == o


def test_a_profile_carries_its_efficiency_into_simulations(tmp_path) -> None:
    base = get_hardware("cpu-local").to_dict()
    profile = tmp_path / "cpu.json"
    profile.write_text(json.dumps({**base, "name": "calibrated-cpu", "efficiency": {"gemm_flops": 0.33, "step_overhead_s": 0.02}}))
    cluster = ClusterConfig(model="qwen2.5-0.5b", hardware=str(profile), weight_dtype="fp32")
    setup = resolve(cluster, SchedulerConfig(), CacheConfig())
    assert setup.efficiency.gemm_flops == 0.33 and setup.efficiency.step_overhead_s == 0.02
    assert setup.efficiency.attention_flops == Efficiency().attention_flops  # unfitted fields keep defaults
    overridden = resolve(cluster, SchedulerConfig(), CacheConfig(), {"gemm_flops": 0.5})
    assert overridden.efficiency.gemm_flops == 0.5 and overridden.efficiency.step_overhead_s == 0.02
    assert Hardware.from_dict(setup.deployment.hardware.to_dict()) == setup.deployment.hardware


def test_the_cpu_placeholder_prices_the_cpp_backends_keys_by_their_own_terms() -> None:
    """The in-place kernel's keys cost less than the torch backend's gathered ones: cpu-local's efficiency is
    the cpp backend's (its default) and the torch backend has K/V terms of its own over it."""
    cluster = ClusterConfig(model="qwen2.5-0.5b", hardware="cpu-local", weight_dtype="fp32")
    setups = {b: resolve(cluster, SchedulerConfig(), CacheConfig(), attention=AttentionConfig(backend=b))
              for b in ("torch", "cpp")}
    hw = get_hardware("cpu-local")
    assert resolve(cluster, SchedulerConfig(), CacheConfig()).efficiency == setups["cpp"].efficiency
    cpp, torch_ = setups["cpp"].efficiency, setups["torch"].efficiency
    assert cpp.kv_bandwidth_ratio == hw.efficiency["kv_bandwidth_ratio"]
    assert torch_.kv_bandwidth_ratio == hw.attention_efficiency["torch"]["kv_bandwidth_ratio"] < cpp.kv_bandwidth_ratio
    assert cpp.gemm_flops == torch_.gemm_flops == hw.efficiency["gemm_flops"]
    step = [Observation(StepShape(num_decodes=64, decode_context_tokens=64 * 900, num_sampling=64,
                                  decode_key_tokens=64 * 900, num_decode_groups=1), 1.0)]
    torch_s, cpp_s = (predict(setups[b].deployment, setups[b].efficiency, step)[0] for b in ("torch", "cpp"))
    assert cpp_s < torch_s
    assert Hardware.from_dict(hw.to_dict()) == hw


def test_a_profile_fitted_on_another_attention_backend_is_refused_naming_both(tmp_path) -> None:
    """A profile's K/V terms price the kernel it was calibrated on: one from before the cpp backend (no
    attention_backend: torch) cannot price a cpp run, nor a cpp profile a torch one; the message names the
    backends and both ways out. The catalog's unfitted GPU entries price any backend with the defaults."""
    base = {**get_hardware("cpu-local").to_dict(), "attention_efficiency": None, "attention_backend": None}
    cluster = ClusterConfig(model="qwen2.5-0.5b", hardware="x", weight_dtype="fp32")
    for name, fitted, asked in (("old", None, "cpp"), ("cpp-fit", "cpp", "torch"), ("placeholder", "cpp", "flex")):
        path = tmp_path / f"{name}.json"
        profile = {**base, "name": name, "attention_backend": fitted}
        if name == "placeholder":
            profile = get_hardware("cpu-local").to_dict()
        path.write_text(json.dumps(profile))
        c = replace(cluster, hardware=str(path))
        with pytest.raises(CatalogError, match=f"fitted on the {fitted or 'torch'} .*cannot price {asked}'s .*"
                                               f"--attention-backend {asked}, or run with --attention-backend "
                                               f"{fitted or 'torch'}"):
            resolve(c, SchedulerConfig(), CacheConfig(), attention=AttentionConfig(backend=asked))
        resolve(c, SchedulerConfig(), CacheConfig())  # its own backend, the default
        assert hardware_efficiency(get_hardware(str(path))) == resolve(c, SchedulerConfig(), CacheConfig()).efficiency
    gpu = ClusterConfig(model="qwen2.5-0.5b", hardware="h100-sxm")
    for backend in ("torch", "flex"):
        resolve(gpu, SchedulerConfig(), CacheConfig(), attention=AttentionConfig(backend=backend))


def test_a_profile_with_bad_attention_efficiency_or_backend_is_refused() -> None:
    with pytest.raises(CatalogError, match="attention_efficiency"):
        Hardware.from_dict({**get_hardware("cpu-local").to_dict(), "attention_efficiency": {"cpp": 0.5}})
    with pytest.raises(CatalogError, match="'attention_backend' must be one of torch, flex, cpp, got 'sdpa'"):
        Hardware.from_dict({**get_hardware("cpu-local").to_dict(), "attention_backend": "sdpa"})


def test_simulations_assume_the_hardwares_default_attention_backend_unless_told() -> None:
    """A CPU engine runs the cpp kernel by default, a GPU engine torch: simulate and plan twin that engine."""
    def backend(hardware: str, attention: AttentionConfig | None = None) -> str:
        cluster = ClusterConfig(model="qwen2.5-0.5b", hardware=hardware, weight_dtype="bf16")
        return resolve(cluster, SchedulerConfig(), CacheConfig(), attention=attention).attention.backend

    assert backend("cpu-local") == "cpp" and backend("h100-sxm") == "torch"
    assert backend("cpu-local", AttentionConfig(backend="torch")) == "torch"


def test_a_profile_with_an_unknown_efficiency_field_says_which(tmp_path) -> None:
    profile = tmp_path / "bad.json"
    profile.write_text(json.dumps({**get_hardware("cpu-local").to_dict(), "efficiency": {"gemm_flop": 0.3}}))
    with pytest.raises(CatalogError, match="gemm_flop"):
        resolve(ClusterConfig(model="qwen2.5-0.5b", hardware=str(profile), weight_dtype="fp32"),
                SchedulerConfig(), CacheConfig())


def test_the_structured_output_term_is_fitted_only_from_steps_that_ran_a_grammar(deployment: Deployment, clean_fit) -> None:
    shapes = _grid()
    plain = clean_fit[1]
    assert plain.structured_overhead_s == 0.0  # no grammar ran: nothing to fit, the term stays off
    truth = Efficiency(**{**TRUE.to_dict(), "structured_overhead_s": 4e-4})
    constrained = [s._replace(num_constrained=s.num_sampling) for s in shapes if s.num_decodes and not s.num_prefill_tokens]
    shapes += constrained
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fitted.structured_overhead_s == pytest.approx(4e-4, rel=0.25)
    assert fit_report(deployment, fitted, observations)["all"]["mape"] < 0.02


def test_the_new_shape_term_is_fitted_from_first_and_repeated_steps_of_a_token_count(deployment: Deployment, clean_fit) -> None:
    shapes = _grid()
    plain = clean_fit[1]
    assert plain.new_shape_overhead_s == 0.0  # no step was marked new: the term stays off
    truth = Efficiency(**{**TRUE.to_dict(), "new_shape_overhead_s": 3e-3})
    shapes = [s._replace(num_new_shapes=1) for s in shapes] + shapes  # each count run first, then again
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fitted.new_shape_overhead_s == pytest.approx(3e-3, rel=0.25)
    assert fit_report(deployment, fitted, observations)["all"]["mape"] < 0.02


def test_the_compiled_step_terms_are_fitted_from_steps_that_ran_compiled(deployment: Deployment, clean_fit) -> None:
    """A compiled engine's grid: its one-group pure decodes ran compiled, its spread decodes (several groups)
    and every step with a prompt chunk eagerly; the ratios come back, and stay 1 without compiled steps."""
    plain = clean_fit[1]
    assert (plain.compiled_overhead_ratio, plain.gemv_bandwidth_ratio) == (1.0, 1.0)
    truth = replace(TRUE, compiled_overhead_ratio=0.3, gemv_bandwidth_ratio=1.5)
    shapes = [s._replace(num_compiled_rows=s.num_decodes) if s.num_decodes and not s.num_prefill_tokens else s
              for s in _grid()]
    shapes += [StepShape(0, 0, 0, b, b * 700, b, decode_key_tokens=b * 900, num_decode_groups=3) for b in (8, 32)]
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fitted.compiled_overhead_ratio == pytest.approx(0.3, rel=0.1)
    assert fitted.gemv_bandwidth_ratio == pytest.approx(1.5, rel=0.1)
    assert fit_report(deployment, fitted, observations)["all"]["mape"] < 0.02
    wider_only = [o for o in observations if o.shape.num_compiled_rows != 1]  # no one-row step: no GEMV term
    assert fit_efficiency(deployment, wider_only).gemv_bandwidth_ratio == 1.0


def test_new_shape_overhead_is_the_median_of_new_count_steps_over_their_twins(deployment: Deployment) -> None:
    """A step of a token count new to the process, minus the median of its twins (the same shape once the count was
    known; a decode batch a step later reads a few more keys): the median of those differences, measured apart from
    the joint fit, where a count's single first step looks like an outlier."""
    prefill, longer = StepShape(64, 64 * 32.5, 64, 0, 0, 1, 1), StepShape(128, 128 * 64.5, 128, 0, 0, 1, 1)
    decode = StepShape(0, 0, 0, 8, 800, 8, 0, 800, num_decode_groups=1)
    new = dict(num_new_shapes=1)
    observations = [
        Observation(prefill._replace(**new), 0.010), Observation(prefill, 0.004), Observation(prefill, 0.006),  # 5 ms
        Observation(longer._replace(**new), 0.012), Observation(longer, 0.006),  # 6 ms
        Observation(decode._replace(**new), 0.009), Observation(decode._replace(decode_key_tokens=808), 0.005),  # 4 ms
        Observation(decode._replace(decode_key_tokens=1200), 0.001),  # 50% more keys: not a twin
        Observation(prefill._replace(num_new_shapes=1, num_wakeups=1), 0.050),  # a wake-up's cost is not a new count's
    ]
    assert new_shape_overhead(observations) == pytest.approx(0.005)
    assert new_shape_overhead(observations[:5]) is None  # two new counts with twins: too few to measure
    assert new_shape_overhead([Observation(prefill._replace(**new), 0.003)] + observations[1:]) == pytest.approx(0.004)
    assert new_shape_overhead([Observation(o.shape, 0.001 if o.shape.num_new_shapes else o.seconds)
                               for o in observations]) == 0.0  # first runs measured faster: no negative cost
    # the joint fit takes the twins' value as given and fits the rest around it
    grid = _grid()
    truth = Efficiency(**{**TRUE.to_dict(), "new_shape_overhead_s": 3e-3})
    shapes = grid + [s._replace(num_new_shapes=1) for s in grid[:6]]  # a few counts new, each measured once
    times = predict(deployment, truth, [Observation(s, 1) for s in shapes]) + 5e-4 * np.sin(np.arange(len(shapes)))
    measured = [Observation(s, t) for s, t in zip(shapes, times)]
    assert fit_efficiency(deployment, measured).new_shape_overhead_s == new_shape_overhead(measured)
    assert new_shape_overhead(measured) == pytest.approx(3e-3, rel=0.25)


def test_the_kv_bandwidth_ratio_prices_decode_keys_apart_from_the_prompt_attention(deployment: Deployment) -> None:
    """A CPU gathers K/V at a third of the weights' rate: the grid's decode batches at short, 512 and 2048-token
    contexts pin what a decode key costs apart from the per-row and per-step terms and from prefill attention."""
    truth = Efficiency(**{**TRUE.to_dict(), "kv_bandwidth_ratio": 0.3})
    shapes = _grid()
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fit_report(deployment, fitted, observations)["all"]["mape"] < 0.02

    def key_cost(eff: Efficiency) -> float:  # what 64 rows' extra 1,536 keys each cost
        long, short = (StepShape(0, 0, 0, 64, 64 * c, 64, 0, 64 * c) for c in (2048, 512))
        return float(np.diff(predict(deployment, eff, [Observation(short, 1), Observation(long, 1)]))[0])

    assert key_cost(fitted) == pytest.approx(key_cost(truth), rel=0.05)
    assert key_cost(truth) > 2 * key_cost(TRUE)  # the ratio matters here: a fit without it could not match


def test_the_shared_key_ratio_is_fitted_from_decodes_whose_rows_share_a_prefix(deployment: Deployment) -> None:
    """64 rows over one cached prefix read its blocks from the CPU's caches after the first row: beside decodes
    whose rows hold their own blocks, the grid's shared-prefix decodes pin what a shared key costs."""
    truth = Efficiency(**{**TRUE.to_dict(), "kv_bandwidth_ratio": 0.3, "kv_shared_bandwidth_ratio": 3.0})
    shared = [StepShape(0, 0, 0, b, b * c, b, 0, b * c, decode_shared_key_tokens=(b - 1) * (c - 16))
              for b in (16, 64) for c in (512, 2048)]
    shapes = _grid() + shared
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fit_report(deployment, fitted, observations)["decode"]["mape"] < 0.02
    held_out = [Observation(StepShape(0, 0, 0, 32, 32 * 1024, 32, 0, 32 * 1024, decode_shared_key_tokens=31 * 1008), 1)]
    assert predict(deployment, fitted, held_out)[0] == pytest.approx(predict(deployment, truth, held_out)[0], rel=0.02)
    # the term matters: priced as any other key, the shared steps miss (past 3x the ratio the max() hides it)
    unshared = replace(fitted, kv_shared_bandwidth_ratio=1.0)
    assert fit_report(deployment, unshared, observations[len(_grid()):])["decode"]["mape"] > 0.1
    # without shared steps the term has nothing to act on and stays at its default
    assert fit_efficiency(deployment, observations[:len(_grid())]).kv_shared_bandwidth_ratio == 1.0
    # a shared key never costs more than a key read from memory: steps that say so fit the floor, 1
    slower = replace(truth, kv_shared_bandwidth_ratio=0.5)
    times = predict(deployment, slower, [Observation(s, 1) for s in shapes])
    assert fit_efficiency(deployment, [Observation(s, t) for s, t in zip(shapes, times)]).kv_shared_bandwidth_ratio == 1.0


def test_the_spill_rate_is_fitted_where_gathered_kv_outgrows_the_cache(deployment: Deployment) -> None:
    """A 2 MiB last-level cache: the grid's wide decodes at long contexts gather more K/V per layer than it holds,
    and the fit finds the rate at which the excess is read back; on a device without the figure it is not fitted."""
    cached = replace(deployment, hardware=replace(deployment.hardware, cache_bytes=2 * 2**20))
    truth = Efficiency(**{**TRUE.to_dict(), "kv_spill_bandwidth": 0.1})
    shapes = _grid()
    observations = _timed(cached, truth, shapes)
    fitted = fit_efficiency(cached, observations)
    assert fitted.kv_spill_bandwidth == pytest.approx(0.1, rel=0.1)
    assert fit_report(cached, fitted, observations)["decode"]["mape"] < 0.02
    assert fit_efficiency(deployment, observations).kv_spill_bandwidth == 1.0  # no cache figure: not fitted


def test_the_wakeup_term_is_fitted_from_prefills_run_after_idling(deployment: Deployment, clean_fit) -> None:
    """As calibrate measures it: a few prompt chunks after the engine idled, beside the same chunks back to back."""
    shapes = _grid()
    plain = clean_fit[1]
    assert plain.wakeup_overhead_s == 0.0  # no step followed an idle engine: the term stays off
    truth = Efficiency(**{**TRUE.to_dict(), "wakeup_overhead_s": 1e-2})
    shapes += [s._replace(num_wakeups=1) for s in shapes[:3]] * 3  # prefills of 16, 64, 256 tokens, 3 times each
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fitted.wakeup_overhead_s == pytest.approx(1e-2, rel=0.25)
    assert fit_report(deployment, fitted, observations)["all"]["mape"] < 0.02


def test_the_proposer_term_is_fitted_from_steps_that_proposed_drafts(deployment: Deployment, clean_fit) -> None:
    """calibrate --speculative-config: small decode batches look drafts up for every row, large ones for none
    (above max_batch_size), so the per-proposal overhead separates from the per-row one."""
    shapes = _grid()
    plain = clean_fit[1]
    assert plain.proposer_overhead_s == 0.0
    truth = Efficiency(**{**TRUE.to_dict(), "proposer_overhead_s": 5e-4})
    shapes += [s._replace(num_proposals=s.num_decodes) for s in shapes if 0 < s.num_decodes <= 8]
    observations = _timed(deployment, truth, shapes)
    fitted = fit_efficiency(deployment, observations)
    assert fitted.proposer_overhead_s == pytest.approx(5e-4, rel=0.25)
    assert fit_report(deployment, fitted, observations)["all"]["mape"] < 0.02


def test_the_draft_step_overhead_is_the_median_residual_of_the_drafts_steps(deployment: Deployment) -> None:
    """Draft forward steps priced at a known `draft_step_overhead_s` (under `draft_efficiency`), a fifth of them
    slowed threefold by a busy machine: the fit recovers the overhead."""
    from dataclasses import replace

    from batchserve.sim.calibration import fit_draft_step_overhead
    from batchserve.sim.speculation import draft_efficiency, draft_step_shape

    draft = replace(deployment, model=replace(deployment.model, num_layers=2))
    truth = draft_efficiency(replace(TRUE, draft_step_overhead_s=0.003), 2, deployment.model.num_layers)
    shapes = [draft_step_shape([c] * b, [1] * b) for b in (1, 2, 4, 8) for c in (40, 300)]
    shapes += [draft_step_shape([0] * b, [n] * b) for b in (1, 4) for n in (16, 64)]
    seconds = predict(draft, truth, [Observation(s, 1) for s in shapes])
    seconds[::5] *= 3
    fitted = fit_draft_step_overhead(draft, draft_efficiency(TRUE, 2, deployment.model.num_layers),
                                     [Observation(s, t) for s, t in zip(shapes, seconds)])
    assert fitted == pytest.approx(0.003, rel=1e-9)
    with pytest.raises(ValueError, match="no draft-model forward step was measured"):
        fit_draft_step_overhead(draft, TRUE, [])


def test_median_per_point_keeps_each_grid_points_median_over_passes() -> None:
    """Three passes of a two-phase grid: each (phase, step) point keeps the median of its three times, so one slow
    pass (a drifting machine's bad minute) moves no point; a step whose shape differs between passes (a token count
    new to the first pass) stays its own point."""
    decode, prefill = StepShape(0, 0, 0, 1, 16, 1), StepShape(64, 64 * 32.5, 64, 0, 0, 1, 1)
    new_prefill = prefill._replace(num_new_shapes=1)

    def grid(scale: float, first: bool) -> list[list[Observation]]:
        return [[Observation(new_prefill if first else prefill, 3.0 * scale)],
                [Observation(decode, 1.0 * scale), Observation(decode, 1.1 * scale)]]

    passes = [grid(1.0, True), grid(2.0, False), grid(1.2, False), grid(0.9, False)]
    points = {(o.shape, round(o.seconds, 9)) for o in median_per_point(passes)}
    assert points == {(new_prefill, 3.0), (prefill, 3.6), (decode, 1.1), (decode, round(1.1 * 1.1, 9))}
    assert median_per_point([grid(1.0, True)]) == [o for phase in grid(1.0, True) for o in phase]

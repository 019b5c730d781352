"""Step costs measured on this machine: the scale and per-sequence cost fitted to them, and who may reuse them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batchserve.jobs.measurements import Measurements, fit_step_costs
from batchserve.jobs.setup import RunSetup
from batchserve.sim.calibration import Observation, predict
from batchserve.sim.cost_model import StepShape


def observations(scale: float, per_seq: float) -> tuple[list[Observation], object]:
    """Decode steps of 1..64 sequences timed as `scale` x the profile plus `per_seq` per sampled sequence."""
    sim = RunSetup(device="cpu").sim_setup("cpu-local")
    shapes = [StepShape(num_decodes=b, decode_context_tokens=100 * b, num_sampling=b) for b in (1, 2, 4, 8, 16, 64)]
    base = predict(sim.deployment, sim.efficiency, [Observation(s, 1.0) for s in shapes])
    return [Observation(s, scale * t + per_seq * s.num_sampling) for s, t in zip(shapes, base)], sim


def test_the_fit_recovers_a_scale_and_a_per_sequence_cost():
    obs, sim = observations(scale=2.5, per_seq=0.001)
    fitted = fit_step_costs(sim.deployment, sim.efficiency, obs)
    assert fitted.time_scale == pytest.approx(2.5, rel=1e-6)
    assert np.allclose(predict(sim.deployment, fitted, obs), [o.seconds for o in obs], rtol=1e-6)


def test_a_machine_faster_than_its_profile_costs_nothing_extra_per_sequence():
    obs, sim = observations(scale=0.5, per_seq=0.0)
    fitted = fit_step_costs(sim.deployment, sim.efficiency, obs)
    assert fitted.time_scale == pytest.approx(0.5)
    assert fitted.sequence_overhead_s == pytest.approx(sim.efficiency.sequence_overhead_s, abs=1e-12)  # none added
    assert fit_step_costs(sim.deployment, sim.efficiency, []) == sim.efficiency


def test_steps_that_grow_faster_with_rows_than_the_profile_keep_the_profiles_shape():
    """Narrow decodes whose time grows steeply with their rows (a busy spell, first shapes): a least-squares
    fit would take a negative scale; the fit keeps the scale alone, not a per-sequence cost without the profile."""
    sim = RunSetup(device="cpu").sim_setup("cpu-local")
    shapes = [StepShape(num_decodes=b, decode_context_tokens=100 * b, num_sampling=b) for b in (3, 4, 5, 8)]
    obs = [Observation(s, 0.012 * s.num_sampling - 0.01) for s in shapes]
    base = predict(sim.deployment, sim.efficiency, obs)
    fitted = fit_step_costs(sim.deployment, sim.efficiency, obs)
    measured = np.array([o.seconds for o in obs])
    assert fitted.time_scale == pytest.approx(measured @ base / (base @ base))
    assert fitted.sequence_overhead_s == sim.efficiency.sequence_overhead_s


def test_measurements_of_another_device_or_dtype_are_refused_naming_both():
    m = Measurements("AMD EPYC (2 threads)", "fp32")
    m.check_target("AMD EPYC (2 threads)", "fp32", "cpp", "x.json")  # a record that predates the backend: any
    with pytest.raises(ValueError, match=r"x.json was measured on 'AMD EPYC \(2 threads\)' in fp32; this estimate "
                                         r"is for 'NVIDIA H100 SXM5 80GB' in bf16"):
        m.check_target("NVIDIA H100 SXM5 80GB", "bf16", "torch", "x.json")


def test_measurements_of_another_attention_backend_are_refused_naming_both():
    """The K/V costs of the gathering torch backend are not the in-place kernel's; the record keeps its backend."""
    m = Measurements.from_dict(json.loads(json.dumps(Measurements("cpu", "fp32", attention_backend="torch").to_dict())))
    m.check_target("cpu", "fp32", "torch", "x.json")
    with pytest.raises(ValueError, match="x.json was measured with the torch attention backend; this estimate is for "
                                         "cpp: profile the job with it, or give --attention-backend torch"):
        m.check_target("cpu", "fp32", "cpp", "x.json")


"""`calibrate` then `validate` on the tiny model: the pipeline runs end to end and the simulator tracks the engine."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from batchserve.attention_layout import default_attention_backend  # noqa: E402
from batchserve.config import CacheConfig, SchedulerConfig  # noqa: E402
from batchserve.entrypoints.cli import main  # noqa: E402
from batchserve.sim.hardware import get_hardware  # noqa: E402
from batchserve.sim.simulate import ClusterConfig, resolve  # noqa: E402


def test_calibrated_simulator_predicts_the_real_engine(tmp_path, capsys) -> None:
    profile, result, steps = tmp_path / "cpu.json", tmp_path / "validate.json", tmp_path / "steps.jsonl"
    # with LoRA on, calibrate also times steps under random adapters (rank 8, two slots)
    assert main(["calibrate", "--model", "tiny", "--device", "cpu", "-o", str(profile), "-q",
                 "--kv-cache-memory", "64MiB", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
                 "--observations", str(steps), "--grid-passes", "2",
                 "--max-context", "512"]) == 0  # the grid up to the validations' contexts (under 250 tokens)
    observed = [json.loads(line) for line in steps.read_text().splitlines()]
    assert max(o["num_lora_segments"] for o in observed) == 2 and sum(o["num_lora_loads"] for o in observed) >= 2
    assert any(o["num_lora_segments"] == 0 for o in observed)  # the base steps the LoRA terms are measured against
    assert sum(o["num_wakeups"] for o in observed) == 9  # prefills after the engine idled: wakeup_overhead_s
    data = json.loads(profile.read_text())
    assert data["_calibration"]["model"] == "tiny" and data["_calibration"]["fit"]["all"]["steps"] > 50
    assert data["_calibration"]["grid_passes"] == 2  # each grid point is its median over two passes
    assert data["attention_backend"] == default_attention_backend("cpu")  # what the K/V terms priced: its twins'
    assert resolve(ClusterConfig(model="qwen2.5-0.5b", hardware=str(profile), weight_dtype="fp32"), SchedulerConfig(),
                   CacheConfig()).attention.backend == data["attention_backend"]
    fit = data["_calibration"]["fit"]  # each LoRA step beside its twin of base rows
    assert fit["lora steps"]["steps"] == fit["lora twins"]["steps"] >= 20
    hw = get_hardware(str(profile))
    assert set(hw.efficiency) >= {"gemm_flops", "step_overhead_s", "sequence_overhead_s", "structured_overhead_s",
                               "wakeup_overhead_s"}
    assert main(["validate", "--model", "tiny", "--device", "cpu", "--hardware", str(profile), "-q",
                 "--kv-cache-memory", "64MiB", "--num-requests", "40", "--rate", "16",
                 "--input-len", "uniform:16:200", "--output-len", "uniform:8:48", "--json", str(result),
                 "--plot", str(tmp_path / "cdf.png")]) == 0
    out = json.loads(result.read_text())
    assert out["throughput_measured"] > 0 and out["throughput_predicted"] > 0
    # Poisson arrivals below saturation: both sides must finish the same work at about the arrival rate
    assert abs(out["throughput_error"]) < 0.30
    assert out["metrics"]["ttft_p50"]["measured"] > 0 and (tmp_path / "cdf.png").stat().st_size > 0
    assert "per-request MAPE" in capsys.readouterr().out
    # a workload over three adapters with two slots: the engine runs them, the simulator predicts them
    assert main(["validate", "--model", "tiny", "--device", "cpu", "--hardware", str(profile), "-q",
                 "--kv-cache-memory", "64MiB", "--num-requests", "24", "--input-len", "uniform:16:200",
                 "--output-len", "uniform:8:32", "--num-adapters", "3", "--max-loras", "2", "--max-lora-rank", "8",
                 "--json", str(result)]) == 0
    out = json.loads(result.read_text())
    assert out["config"]["lora"]["max_loras"] == 2 and out["config"]["workload"]["num_adapters"] == 3
    # the same work on both sides (how close their times are is measured in bench/, not asserted on a shared machine)
    assert out["measured"]["num_requests"] == out["predicted"]["num_requests"] == 24
    assert out["measured"]["total_output_tokens"] == out["predicted"]["total_output_tokens"]
    # Offline, the twin schedules the real run's steps: its makespan is the profile's price of those very steps
    costs = out["step_costs"]
    assert costs["all"]["num"] > 10 and costs["all"]["priced_s"] == pytest.approx(out["predicted"]["duration_s"],
                                                                                  rel=1e-6)
    assert costs["all"]["priced_over_measured"] == costs["all"]["priced_s"] / costs["all"]["measured_s"]
    for key in ("num", "measured_s", "priced_s"):  # every step computed prompt tokens or only decoded
        assert costs["with prompt tokens"][key] + costs["decode only"][key] == pytest.approx(costs["all"][key])
    assert "the real run's own steps, priced / measured: all" in capsys.readouterr().out


def test_validate_without_a_profile_says_what_to_pass(capsys) -> None:
    assert main(["validate", "--model", "tiny", "--num-requests", "2"]) == 2
    assert "--hardware" in capsys.readouterr().err


def test_validate_rejects_requests_longer_than_the_context(tmp_path, capsys) -> None:
    assert main(["validate", "--model", "tiny", "--device", "cpu", "--hardware", "cpu-local", "-q",
                 "--num-requests", "3", "--input-len", "4000", "--output-len", "8"]) == 2
    assert "context of 2048" in capsys.readouterr().err

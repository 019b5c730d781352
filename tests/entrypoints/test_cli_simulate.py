"""`batchserve simulate`: flags, TOML config, outputs, sweep and error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batchserve.entrypoints.cli import main

SMALL = ["--num-requests", "200", "--rate", "20", "-q"]


def run_json(tmp_path, *args: str) -> dict:
    out = tmp_path / "out.json"
    assert main(["simulate", *SMALL, "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def test_json_holds_resolved_config_and_metrics_with_units(tmp_path) -> None:
    data = run_json(tmp_path, "--max-num-seqs", "64", "--scheduler", "vllm", "--slo", "ttft=2s,tpot=100ms")
    config, metrics = data["config"], data["metrics"]
    assert config["scheduler"]["max_num_seqs"] == 64  # explicit flag
    assert config["scheduler"]["enable_chunked_prefill"] is False  # from the vllm preset
    assert config["scheduler"]["prefill_first"] is True
    assert config["cache"]["num_blocks"] > 0  # derived from memory
    assert config["deployment"] == {
        "model": "llama-3.1-8b", "hardware": "h100-sxm", "tp": 1, "pp": 1, "num_gpus": 1,
        "weight_dtype": "bf16", "quantization": None, "kv_cache_dtype": "auto", "gpu_memory_utilization": 0.9,
    }
    assert config["workload"]["num_requests"] == 200 and config["workload"]["rate"] == 20
    for key in ("ttft_s", "tpot_s", "e2e_s", "queue_s"):
        assert set(metrics[key]) >= {"mean", "p50", "p90", "p99"}
        assert metrics[key]["p50"] <= metrics[key]["p99"]
    assert metrics["num_requests"] == 200
    assert 0 <= metrics["goodput"] <= metrics["request_throughput"] + 1e-9
    assert data["simulation"]["num_rejected"] == 0


def test_same_seed_same_result_other_seed_differs(tmp_path) -> None:
    a = run_json(tmp_path, "--seed", "3")["metrics"]
    b = run_json(tmp_path, "--seed", "3")["metrics"]
    c = run_json(tmp_path, "--seed", "4")["metrics"]
    assert a == b
    assert a != c


def test_toml_config_sets_fields_and_flags_override(tmp_path) -> None:
    toml = tmp_path / "sim.toml"
    toml.write_text('model = "qwen2.5-7b"\nmax-num-seqs = 32\nblock_size = 32\nno_such_field = 1\n')
    assert main(["simulate", *SMALL, "--config", str(toml)]) == 2  # unknown key is an error
    toml.write_text('model = "qwen2.5-7b"\nmax-num-seqs = 32\nblock_size = 32\nscheduler = "orca"\n')
    data = run_json(tmp_path, "--config", str(toml), "--max-num-seqs", "48")
    assert data["config"]["model"] == "qwen2.5-7b"
    assert data["config"]["cache"]["block_size"] == 32
    assert data["config"]["scheduler"]["max_num_seqs"] == 48
    assert data["config"]["scheduler_preset"] == "orca"


def test_outputs_table_per_request_and_plot(tmp_path, capsys) -> None:
    per_request, plot = tmp_path / "req.jsonl", tmp_path / "run.png"
    assert main(["simulate", *SMALL, "--per-request", str(per_request), "--plot", str(plot), "--track-token-times"]) == 0
    table = capsys.readouterr().out
    assert "TTFT" in table and "TPOT" in table and "Request throughput" in table
    lines = per_request.read_text().splitlines()
    assert len(lines) == 200
    first = json.loads(lines[0])
    assert first["ttft_s"] > 0 and len(first["token_times"]) == first["num_output_tokens"]
    assert plot.stat().st_size > 10_000


def test_sweep_reports_each_rate_and_saturation(tmp_path, capsys) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    args = ["simulate", "-q", "--num-requests", "1500", "--sweep", "rate=10,60", "--json", str(out), "--plot", str(plot)]
    assert main(args) == 0
    rows = json.loads(out.read_text())["sweep"]
    assert [r["rate"] for r in rows] == [10, 60]
    low, high = (r["metrics"] for r in rows)
    assert high["ttft_s"]["p50"] > low["ttft_s"]["p50"]  # queueing once past saturation
    data = json.loads(out.read_text())
    assert 25 < data["capacity_request_throughput"] < 45  # ~35 req/s for this model, GPU and workload
    assert rows[0]["load"] < 0.5 < 1 < rows[1]["load"]
    assert "saturated from rate 60" in capsys.readouterr().out
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "valid names: llama-2-7b"),
        (["--hardware", "tpu9"], "h100-sxm"),
        (["--model", "llama-3.1-405b"], "GiB missing per GPU"),
        (["--weight-dtype", "fp8", "--hardware", "a100-80gb"], "no fp8"),
        (["--input-len", "lognormal:512"], "accepted forms"),
        (["--max-num-seqs", "1024", "--scheduler", "sarathi"], "must be >= max_num_seqs"),
        (["--sweep", "tp=1:4:1"], "only rate sweeps"),
        (["--slo", "ttft=fast"], "ttft"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, capsys) -> None:
    assert main(["simulate", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_malformed_trace_names_the_line(tmp_path, capsys) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 3}\n{"arrival_time": 1}\n')
    assert main(["simulate", "-q", "--workload", str(trace)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_trace_replay_runs(tmp_path) -> None:
    trace = tmp_path / "trace.csv"
    rows = ["arrival_time,prompt_tokens,output_tokens,prefix_id,prefix_tokens"]
    rows += [f"{i * 0.05},{100 + i},{20},{i % 2},64" for i in range(40)]
    trace.write_text("\n".join(rows) + "\n")
    data = run_json(tmp_path, "--workload", str(trace))
    assert data["metrics"]["num_requests"] == 40
    assert data["metrics"]["prefix_cache_hit_rate"] > 0.3  # 64 of ~120 tokens shared by half the requests


def test_console_script_and_core_need_no_torch() -> None:
    code = "import sys, batchserve.sim.simulate, batchserve.entrypoints.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_speculative_decoding_is_simulated_and_recorded(tmp_path, capsys) -> None:
    """A lone-request workload (memory-bound decodes) speeds up with drafts; the JSON says what was assumed."""
    lone = ["--max-num-seqs", "1", "--num-requests", "20", "--output-len", "200"]
    plain = run_json(tmp_path, *lone)
    spec = run_json(tmp_path, *lone, "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}',
                    "--spec-acceptance-rate", "0.8")
    assert "speculative_config" not in plain["config"]
    assert spec["config"]["speculative_config"]["num_speculative_tokens"] == 4
    assert spec["config"]["spec_acceptance"]["spec_acceptance_rate"] == 0.8
    sim = spec["simulation"]
    assert 0 < sim["spec_accepted_tokens"] < sim["spec_draft_tokens"]
    assert spec["metrics"]["tpot_s"]["mean"] < plain["metrics"]["tpot_s"]["mean"] / 2
    assert "draft tokens accepted / proposed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speculative-config", "{ngram}"], "--speculative-config: speculative config is not valid JSON"),
        (["--speculative-config", '{"num_speculative": 4}'], "unknown speculative config key(s) ['num_speculative']"),
        (["--speculative-config", '{"model": "nope"}'], "unknown model 'nope'"),
        (["--speculative-config", "{}", "--spec-acceptance-rate", "2"], "--spec-acceptance-rate must be in [0, 1]"),
        (["--speculative-config", "{}", "--spec-acceptance-rate", "0.9", "--spec-acceptance-spread", "0.4"],
         "--spec-acceptance-spread must be in [0, 0.300) at --spec-acceptance-rate 0.9"),
    ],
)
def test_bad_speculative_input_is_one_clear_line(args, message, capsys) -> None:
    assert main(["simulate", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

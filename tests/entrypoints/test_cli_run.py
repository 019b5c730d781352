"""`batchserve run`: the summary table and JSON, resuming, --estimate, and errors that stop a job up front."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "jobs"))
from jobfiles import completion, shared_prefix_requests, write_jsonl  # noqa: E402

from batchserve.entrypoints.cli import main  # noqa: E402

ENGINE = ["--model", "tiny", "--device", "cpu", "--kv-cache-memory", "4MiB", "--max-num-batched-tokens", "512", "-q"]


def test_run_prints_a_summary_writes_json_and_resumes(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.txt", ["a plain prompt", '{"prompt": "another", "max_tokens": 2}', "{bad"])
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    assert main(["run", str(inp), "-o", str(out), "--max-tokens", "3", "--json", str(summary), *ENGINE]) == 0
    assert "Requests ok / failed:" in capsys.readouterr().out
    data = json.loads(summary.read_text())["summary"]
    assert (data["num_ok"], data["num_failed"], data["output_tokens"]) == (2, 1, 5)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["1", "2", "3"]  # plain lines are named by line number
    assert main(["run", str(inp), "-o", str(out), "--max-tokens", "3", "--json", str(summary), *ENGINE]) == 0
    data = json.loads(summary.read_text())["summary"]
    assert (data["num_ok"], data["num_failed"], data["num_skipped"]) == (0, 0, 3)
    assert len(out.read_text().splitlines()) == 3


def test_duplicate_custom_ids_stop_the_job_before_it_writes(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [completion("x", "a"), completion("y", "b"), completion("x", "c")])
    out = tmp_path / "out.jsonl"
    assert main(["run", str(inp), "-o", str(out), *ENGINE]) == 2
    assert "batchserve run: error:" in capsys.readouterr().err
    assert not out.exists()


def test_errors_say_what_to_do(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [completion("x", "a")])
    assert main(["run", str(inp), "-q", "--model", "tiny"]) == 2
    assert "give -o/--output" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"), "-q", "--model", "tiny"]) == 2
    assert "No such file" in capsys.readouterr().err
    assert main(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), *ENGINE, "--max-model-len", "4096"]) == 2
    assert "give an integer from 1 to 2048" in capsys.readouterr().err


def test_estimate_predicts_without_running_and_prices_the_job(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", shared_prefix_requests(4, 64, prefix_len=200, max_tokens=8))
    summary = tmp_path / "estimate.json"
    args = ["run", str(inp), "--model", "tiny", "--estimate", "h100-sxm", "--price-per-hour", "3.6", "--json", str(summary)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "estimate: tiny on 1 x" in table and "Predicted cost:" in table
    data = json.loads(summary.read_text())
    s, info = data["summary"], data["estimate"]
    assert s["num_ok"] == 64 and s["output_tokens"] == 64 * 8  # every request runs to max_tokens
    assert s["computed_prompt_tokens"] < s["prompt_tokens"] / 2  # same ordering: shared prefixes computed once
    assert info["predicted_wall_s"] == s["wall_s"] > 0
    assert info["cost"] == s["wall_s"] / 3600 * 3.6
    assert main(args + ["--no-prefix-order", "--json", str(tmp_path / "arrival.json")]) == 0
    arrival = json.loads((tmp_path / "arrival.json").read_text())["summary"]
    assert arrival["computed_prompt_tokens"] > s["computed_prompt_tokens"]


def test_estimate_keeps_n_completions_of_ids_with_any_characters(tmp_path, capsys):
    rows = [completion("a#1", "first", max_tokens=4, n=2), completion("a", "second", max_tokens=4, n=3)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = tmp_path / "estimate.json"
    assert main(["run", str(inp), "--model", "tiny", "--estimate", "h100-sxm", "--json", str(summary)]) == 0
    s = json.loads(summary.read_text())["summary"]
    assert s["num_ok"] == 2 and s["output_tokens"] == (2 + 3) * 4


def test_estimate_computes_an_n_prompt_once_like_the_engine(tmp_path, capsys):
    """n=4 on a 200-token prompt: the first completion computes it, the rest only the tail past 12 full blocks."""
    inp = write_jsonl(tmp_path / "in.jsonl", [completion("p", list(range(1, 201)), max_tokens=4, n=4, ignore_eos=True)])
    real, estimate = tmp_path / "real.json", tmp_path / "estimate.json"
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--json", str(real), "-q", "--model", "tiny"]) == 0
    assert main(["run", str(inp), "--estimate", "h100-sxm", "--json", str(estimate), "-q", "--model", "tiny"]) == 0
    computed = [json.loads(p.read_text())["summary"]["computed_prompt_tokens"] for p in (real, estimate)]
    assert computed == [200 + 3 * 8, 200 + 3 * 8]


def profile(tmp_path: Path, name: str, peak_flops: dict[str, float], here: bool = True) -> str:
    """A hardware profile JSON; `here`: described as `calibrate` describes this machine's CPU."""
    import torch

    from batchserve.calibration.device import device_name

    description = f"{device_name(torch.device('cpu'))}, calibrated 2026-01-01" if here else name
    data = {"name": name, "description": description, "peak_flops": peak_flops, "memory_bandwidth": 10e9,
            "memory_bytes": 2**34, "interconnect_bandwidth": 1e9, "max_gpus_per_node": 1}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("batchserve run: error: ") and "\n" not in err
    return err


def test_estimate_runs_in_the_dtype_the_run_would_use(tmp_path, capsys):
    """A float32 run is estimated with fp32 costs: an fp32-only profile (as `calibrate --dtype float32` writes)
    works, and on a profile with both, fp32's lower peak predicts a longer job than bf16's."""
    inp = write_jsonl(tmp_path / "in.jsonl", shared_prefix_requests(2, 16, prefix_len=100, max_tokens=8))
    fp32_only = profile(tmp_path, "fp32-only", {"fp32": 50e9})
    both = profile(tmp_path, "both", {"fp32": 5e9, "bf16": 500e9})

    def predicted(hardware: str, dtype: str) -> dict:
        out = tmp_path / f"{Path(hardware).stem}-{dtype}.json"
        assert main(["run", str(inp), "--estimate", hardware, "--dtype", dtype, "--json", str(out), *ENGINE]) == 0
        return json.loads(out.read_text())["estimate"]

    assert predicted(fp32_only, "float32")["weight_dtype"] == "fp32"
    assert predicted(fp32_only, "auto")["weight_dtype"] == "fp32"  # tiny's checkpoint dtype
    assert predicted(both, "float32")["predicted_wall_s"] > 2 * predicted(both, "bfloat16")["predicted_wall_s"]
    capsys.readouterr()
    assert main(["run", str(inp), "--estimate", fp32_only, "--dtype", "bfloat16", *ENGINE]) == 2
    assert "no bf16" in one_line_error(capsys)


def test_estimate_bad_inputs_are_one_line_errors(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [completion("a", "x", max_tokens=2), completion("b", "y", max_tokens=2)])
    assert main(["run", str(inp), "--estimate", "cpu-local", "--sample", "3", *ENGINE]) == 2
    assert "--sample 3 exceeds the job's 2 requests" in one_line_error(capsys)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert main(["run", str(empty), "--estimate", "cpu-local", *ENGINE]) == 2
    assert "no requests to estimate" in one_line_error(capsys)
    assert main(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--sample", "1", *ENGINE]) == 2
    assert "only used with --estimate" in one_line_error(capsys)
    assert main(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--estimate", "cpu-local", "--sample", "1",
                 "--preserve-order", *ENGINE]) == 2
    assert "out of input order" in one_line_error(capsys)

    run_json = tmp_path / "run.json"
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--json", str(run_json), *ENGINE]) == 0
    capsys.readouterr()
    assert main(["run", str(inp), "--estimate", "h100-sxm", "--profile-from", str(run_json), *ENGINE]) == 2
    err = one_line_error(capsys)
    assert json.loads(run_json.read_text())["measurements"]["device"] in err
    assert "'NVIDIA H100 SXM5 80GB' in fp32" in err
    here = profile(tmp_path, "here", {"fp32": 50e9, "bf16": 50e9})
    assert main(["run", str(inp), "--estimate", here, "--dtype", "bfloat16", "--profile-from", str(run_json),
                 *ENGINE]) == 2
    assert "in fp32; this estimate is for" in (err := one_line_error(capsys)) and err.endswith(
        "profile the job on that device and dtype") and "in bf16" in err
    assert main(["run", str(inp), "--estimate", here, "--profile-from", str(tmp_path / "nope.json"), *ENGINE]) == 2
    assert "no such file" in one_line_error(capsys)


def test_and_run_compares_estimate_and_actual_and_its_json_feeds_the_next_estimate(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", shared_prefix_requests(2, 12, prefix_len=60, max_tokens=6))
    here = profile(tmp_path, "here", {"fp32": 50e9})
    out, run_json = tmp_path / "out.jsonl", tmp_path / "run.json"
    assert main(["run", str(inp), "-o", str(out), "--estimate", here, "--sample", "2", "--probe-steps", "8",
                 "--target-token-error", "0.001", "--and-run", "--json", str(run_json), *ENGINE]) == 0
    text = capsys.readouterr().out
    # two completions cannot pin the job's tokens to +-0.1%: it names a larger sample, at most the job
    assert "For a tighter token range:" in text and "--sample 12 (about +-0.1% at p10-p90)" in text
    assert "Estimated wall time, job (s):" in text and "Actual wall time, job (s):" in text
    assert len(out.read_text().splitlines()) == 12
    data = json.loads(run_json.read_text())
    probe = data["estimate"]["probe"]  # decode steps as wide as the job's, after the sample: the costs' scale
    assert f"a probe of {probe['steps']} decode steps of {probe['width']} rows" in text and probe["width"] > 2
    assert data["summary"]["num_skipped"] == 2 and data["estimate"]["sample"]["num_requests"] == 2
    assert data["estimate"]["sample_for_target"] == {"sample": 12, "target_token_error": 0.001}
    measured = data["measurements"]
    assert measured["dtype"] == "fp32" and measured["num_requests"] == 10 and len(measured["completions"]) == 10
    assert {"num_prefill_tokens", "num_decodes", "seconds"} <= set(measured["steps"][0])

    again = tmp_path / "again.json"
    assert main(["run", str(inp), "--estimate", here, "--profile-from", str(run_json), "--json", str(again),
                 *ENGINE]) == 0
    info = json.loads(again.read_text())["estimate"]
    assert "learned from 10 completions" in info["assumes"] and info["time_scale"] != 1.0

    # the same command again on the finished job: nothing to estimate or run, and that is not an error
    assert main(["run", str(inp), "-o", str(out), "--estimate", here, "--and-run", *ENGINE]) == 0
    text = capsys.readouterr().out
    assert f"every request of {inp} is already in {out}" in text
    assert len(out.read_text().splitlines()) == 12

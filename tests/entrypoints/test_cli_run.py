"""`batchserve run`: the summary table and JSON, resuming, --estimate, and errors that stop a job up front."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "jobs"))
from jobfiles import completion, shared_prefix_requests, write_jsonl  # noqa: E402

from batchserve.entrypoints.cli import main  # noqa: E402

ENGINE = ["--device", "cpu", "--kv-cache-memory", "4MiB", "--max-num-batched-tokens", "512", "-q"]


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
    assert main(["run", str(inp), "-q"]) == 2
    assert "give -o/--output" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"), "-q"]) == 2
    assert "No such file" in capsys.readouterr().err


def test_estimate_predicts_without_running_and_prices_the_job(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", shared_prefix_requests(4, 64, prefix_len=200, max_tokens=8))
    summary = tmp_path / "estimate.json"
    args = ["run", str(inp), "--estimate", "h100-sxm", "--price-per-hour", "3.6", "--json", str(summary)]
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
    assert main(["run", str(inp), "--estimate", "h100-sxm", "--json", str(summary)]) == 0
    s = json.loads(summary.read_text())["summary"]
    assert s["num_ok"] == 2 and s["output_tokens"] == (2 + 3) * 4


def test_estimate_computes_an_n_prompt_once_like_the_engine(tmp_path, capsys):
    """n=4 on a 200-token prompt: the first completion computes it, the rest only the tail past 12 full blocks."""
    inp = write_jsonl(tmp_path / "in.jsonl", [completion("p", list(range(1, 201)), max_tokens=4, n=4, ignore_eos=True)])
    real, estimate = tmp_path / "real.json", tmp_path / "estimate.json"
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--json", str(real), "-q"]) == 0
    assert main(["run", str(inp), "--estimate", "h100-sxm", "--json", str(estimate), "-q"]) == 0
    computed = [json.loads(p.read_text())["summary"]["computed_prompt_tokens"] for p in (real, estimate)]
    assert computed == [200 + 3 * 8, 200 + 3 * 8]

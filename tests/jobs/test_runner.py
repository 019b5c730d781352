"""Whole jobs on the tiny model: bad lines, prefix-aware ordering, output order, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobfiles import chat, completion, read_results, shared_prefix_requests, write_jsonl

from batchserve.jobs.engine_backend import local_job
from batchserve.jobs.runner import JobConfig

ENGINE = dict(device="cpu", kv_cache_memory="4MiB", max_num_batched_tokens=512, max_num_seqs=32)


def run(inp: Path, out: Path, engine: dict | None = None, **config) -> tuple:
    summary = local_job(str(inp), str(out), "tiny", engine or ENGINE, JobConfig(**config), quiet=True)
    return summary, read_results(out)


def test_bad_lines_get_error_entries_and_the_job_goes_on(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [
        completion("ok1", "hello", max_tokens=3),
        "{truncated",
        completion("neg", "x", temperature=-1),
        {"custom_id": "url", "method": "POST", "url": "/v1/images", "body": {}},
        completion("long", "x" * 3000, max_tokens=4),
        chat("ok2", "hi there", max_tokens=2),
    ])
    summary, res = run(inp, tmp_path / "out.jsonl")
    assert (summary.num_ok, summary.num_failed) == (2, 4)
    assert set(res) == {"ok1", "line 2", "neg", "url", "long", "ok2"}
    assert res["ok1"]["response"]["body"]["usage"]["completion_tokens"] == 3
    assert res["ok2"]["response"]["body"]["object"] == "chat.completion"
    assert len(res["ok2"]["response"]["body"]["choices"][0]["message"]["content"]) > 0
    errors = {k: r["error"]["message"] for k, r in res.items() if r["error"]}
    assert errors["line 2"].startswith("line 2: not valid JSON")
    assert errors["neg"] == "line 3: temperature: Input should be greater than or equal to 0"
    assert "unsupported url '/v1/images'" in errors["url"]
    assert errors["long"].startswith("line 5: ") and "exceeds max_model_len=2048" in errors["long"]


def test_prefix_aware_order_computes_far_fewer_prompt_tokens(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", shared_prefix_requests(8, 256, prefix_len=400, max_tokens=2))
    # A cache of 160 blocks cannot hold the 8 x 25 blocks of system prompts beside the running requests,
    # as in real jobs with many documents: in arrival order, LRU evicts a prefix before its next use.
    engine = dict(ENGINE, kv_cache_memory="1.25MiB", max_num_batched_tokens=2048)
    aware, res_aware = run(inp, tmp_path / "aware.jsonl", engine)
    arrival, res_arrival = run(inp, tmp_path / "arrival.jsonl", engine, prefix_aware=False)
    assert aware.num_ok == arrival.num_ok == 256
    assert aware.prompt_tokens == arrival.prompt_tokens
    assert aware.computed_prompt_tokens <= 0.5 * arrival.computed_prompt_tokens
    assert aware.prefix_cache_hit_rate > arrival.prefix_cache_hit_rate
    # every system prompt is computed once (the anchor gating): the rest is the questions
    questions = aware.prompt_tokens - 256 * 400
    assert aware.computed_prompt_tokens <= questions + 8 * 400 + 256 * 16  # slack: block rounding
    assert res_aware == res_arrival  # the order changes the cost, not the results


def test_preserve_order_writes_input_order(tmp_path):
    reqs = shared_prefix_requests(3, 24, prefix_len=64, max_tokens=2)
    inp = write_jsonl(tmp_path / "in.jsonl", reqs[:5] + ["not json"] + reqs[5:])
    out = tmp_path / "out.jsonl"
    run(inp, out, preserve_order=True)
    ids = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert ids == [r["custom_id"] for r in reqs[:5]] + [None] + [r["custom_id"] for r in reqs[5:]]


def test_resumed_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    rng = random.Random()
    lines = [completion(f"c{i}", f"prompt {i} " * rng.randint(1, 6), max_tokens=6, temperature=0.8)
             for i in range(200)]
    lines[17] = "{oops"
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    _, reference = run(inp, tmp_path / "reference.jsonl", engine=dict(ENGINE, kv_cache_memory="16MiB"))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "batchserve", "run", str(inp), "-o", str(out), "-q", "--model", "tiny", "--kv-cache-memory", "16MiB",
           "--max-num-batched-tokens", "512", "--max-num-seqs", "32", "--device", "cpu"]
    kill_after = rng.randint(1, 150)  # results on disk when the kill comes
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= kill_after:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = out.read_bytes().count(b"\n")
    assert 0 < written < 200, f"the kill came at {written} results; want a job cut short"
    with open(out, "ab") as f:
        f.write(b'{"id": "batch_req_torn", "custom_id": "c1')  # what a kill in the middle of a write leaves
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{written}" in resumed.stdout  # the summary counts the results it skipped
    assert read_results(out) == reference


def test_lines_that_crashed_jobs_before_are_error_entries(tmp_path):
    """A line nested too deep to parse, a huge seed, NaN: each its own error entry, and the job goes on."""
    deep = '{"custom_id": "deep", "method": "POST", "url": "/v1/completions", "body": {"prompt": ' + \
        "[" * 5000 + "]" * 5000 + "}}"
    inp = write_jsonl(tmp_path / "in.jsonl", [
        completion("ok1", "hello", max_tokens=2), deep,
        completion("seed", "x", max_tokens=2, seed=2**70),
        '{"custom_id": "nan", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "temperature": NaN}}',
        completion("ok2", "bye", max_tokens=2),
    ])
    summary, results = run(inp, tmp_path / "out.jsonl")
    assert (summary.num_ok, summary.num_failed) == (2, 3)
    assert "nested too deeply" in results["line 2"]["error"]["message"]
    assert "seed" in results["seed"]["error"]["message"] and results["seed"]["error"]["param"] == "seed"
    assert "finite" in results["nan"]["error"]["message"]

"""Two Ray replicas give the same results as one engine (per-request seeds, prefix-affinity sharding)."""

from __future__ import annotations

import pytest
from jobfiles import read_results, shared_prefix_requests, write_jsonl

from batchserve.jobs.engine_backend import local_job
from batchserve.jobs.runner import JobConfig

ray = pytest.importorskip("ray")
ENGINE = dict(device="cpu", kv_cache_memory="4MiB", max_num_batched_tokens=512, max_num_seqs=16)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_replicas_match_one(tmp_path, local_ray):
    from batchserve.jobs.ray_runner import run_ray_job

    lines = shared_prefix_requests(4, 40, prefix_len=96, max_tokens=4)
    for line in lines[::3]:
        line["body"]["temperature"] = 0.9
    lines[5] = "{broken"
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    config = JobConfig()
    local_job(str(inp), str(tmp_path / "one.jsonl"), "tiny", ENGINE, config, quiet=True)
    summary = run_ray_job(str(inp), str(tmp_path / "two.jsonl"), "tiny", ENGINE, config, replicas=2, quiet=True)
    assert (summary.num_ok, summary.num_failed) == (39, 1)
    assert summary.computed_prompt_tokens < summary.prompt_tokens  # shared prefixes hit each replica's cache
    assert read_results(tmp_path / "two.jsonl") == read_results(tmp_path / "one.jsonl")

"""Speculative decoding from the front ends: `--speculative-config` on `run` (summary row) and the server
(/metrics counters with vLLM's names), and bad configs refused in one line before a model loads."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent.parent / "jobs"))
from jobfiles import write_jsonl

from batchserve.engine.llm_engine import LLMEngine
from batchserve.entrypoints.cli import main

NGRAM = '{"method": "ngram", "num_speculative_tokens": 3}'
REPETITIVE = "abcdefabcdefabcdefabcdef"


def test_run_reports_accepted_drafts(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.txt", [REPETITIVE, REPETITIVE[::-1] * 2])
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = ["run", str(inp), "-o", str(out), "--max-tokens", "24", "--temperature", "0", "--json", str(summary),
            "--model", "tiny", "--device", "cpu", "--kv-cache-memory", "4MiB", "-q", "--speculative-config", NGRAM]
    assert main(args) == 0
    assert "Draft tokens accepted / proposed:" in capsys.readouterr().out
    data = json.loads(summary.read_text())["summary"]
    assert 0 < data["spec_accepted_tokens"] <= data["spec_draft_tokens"]


def test_metrics_count_drafts_and_accepted_tokens():
    from fastapi.testclient import TestClient

    from batchserve.entrypoints.openai.api_server import build_app

    llm = LLMEngine("tiny", kv_cache_memory="4MiB", speculative_config=NGRAM)
    with TestClient(build_app(llm, "tiny")) as client:
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": REPETITIVE, "max_tokens": 24,
                                                 "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 24
        text = client.get("/metrics").text
    values = {m[0]: float(m[1]) for m in re.findall(r"^batchserve:(spec_decode_\w+)_total\{[^}]*\} (\S+)$", text, re.MULTILINE)}
    assert 0 < values["spec_decode_num_accepted_tokens"] <= values["spec_decode_num_draft_tokens"]
    assert values["spec_decode_num_drafts"] > 0


@pytest.mark.parametrize(("config", "words"), [
    ("{bad", "not valid JSON"),
    ('{"method": "eagle"}', "method 'eagle' is not supported"),
    ('{"num_spec": 3}', "unknown speculative config key"),
    ('{"num_speculative_tokens": 0}', "num_speculative_tokens must be >= 1"),
])
def test_bad_speculative_config_is_one_line(config, words, capsys):
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--speculative-config", config]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_calibration_steps_count_the_requests_that_proposed_drafts():
    """Each measured decode step records how many requests the n-gram proposer looked up (the proposer term's data)."""
    from batchserve.calibration.steps import record_steps
    from batchserve.gemm_shapes import SeenTokenCounts

    llm = LLMEngine("tiny", kv_cache_memory="4MiB", speculative_config=NGRAM, skip_tokenizer_init=True)
    observations = record_steps(llm.engine, [([5, 6, 7, 5, 6, 7, 5, 6], 6, 0), ([9, 8, 9, 8, 9, 8], 6, 0)],
                                SeenTokenCounts())
    # the prompts' step looks nothing up; the next one looks up both requests' drafts
    assert [o.shape.num_proposals for o in observations[:2]] == [0, 2]
    assert sum(o.shape.num_proposals for o in observations) == llm.speculator.num_proposals


def test_calibrate_refuses_a_draft_model_config():
    from batchserve.calibration.steps import calibrate

    llm = LLMEngine("tiny", kv_cache_memory="4MiB", speculative_config={"model": "tiny"}, skip_tokenizer_init=True)
    with pytest.raises(ValueError, match="calibrate --speculative-config fits the n-gram proposer's overhead"):
        calibrate(llm, "x", quiet=True)

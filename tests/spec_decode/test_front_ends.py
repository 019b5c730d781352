"""Speculative decoding from the front ends: `--speculative-config` on `run` (summary row) and the server
(/metrics counters with vLLM's names), and bad configs refused in one line before a model loads."""

from __future__ import annotations

import json
import re
import sys
import time
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


class _Slowed:
    """A model whose every forward pass first sleeps `seconds`."""

    def __init__(self, model, seconds: float) -> None:
        self.model, self.seconds = model, seconds

    def __call__(self, *args):
        time.sleep(self.seconds)
        return self.model(*args)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def test_calibration_times_a_draft_models_steps_apart_from_the_targets(monkeypatch):
    """With a draft model, each draft forward step is logged with its time and taken out of the target step's;
    the draft's fixed step cost is fitted from the logged steps. Each draft step here sleeps 0.6 s more: the
    target's steps stay far below that, the fitted draft overhead above it."""

    from batchserve.calibration.steps import _fit_draft, record_steps
    from batchserve.gemm_shapes import SeenTokenCounts
    from batchserve.sim.cost_model import Efficiency
    from batchserve.sim.deployment import Deployment
    from batchserve.sim.hardware import get_hardware

    llm = LLMEngine("tiny", kv_cache_memory="4MiB", speculative_config={"model": "tiny", "num_speculative_tokens": 2},
                    skip_tokenizer_init=True)
    draft = llm.speculator.proposer
    monkeypatch.setattr(draft, "model", _Slowed(draft.model, 0.6))
    draft.forward_log = []
    observations = record_steps(llm.engine, [([5, 6, 7, 8], 5, 0), ([9, 8, 7], 5, 0)], SeenTokenCounts())
    proposing = [o for o in observations if o.shape.num_proposals]
    assert proposing and len(draft.forward_log) >= len(proposing)
    assert all(f.seconds >= 0.6 for f in draft.forward_log)
    assert all(o.seconds < 0.5 for o in proposing)  # the draft's 0.6 s or more per proposal was taken out
    target = Deployment(llm.model_config, get_hardware("cpu-local"), weight_dtype="fp32")
    efficiency, report = _fit_draft(target, Efficiency(), draft, draft.forward_log)
    assert efficiency.draft_step_overhead_s >= 0.6 and report["steps"] == len(draft.forward_log)


@pytest.mark.parametrize("config", [NGRAM, '{"model": "tiny", "num_speculative_tokens": 2}'], ids=["ngram", "draft"])
def test_calibrations_speculative_phases_measure_verifications_and_lookups(config):
    """calibrate runs its grid without speculation, then decode batches with it: repeated phrases give the n-gram
    proposer drafts to verify, random prompts lookups that find none; a draft model's steps are logged."""
    from batchserve.calibration.steps import _speculative_steps
    from batchserve.gemm_shapes import SeenTokenCounts

    llm = LLMEngine("tiny", kv_cache_memory="4MiB", speculative_config=config, skip_tokenizer_init=True, max_num_seqs=4)
    speculator = llm.scheduler.speculator
    llm.scheduler.speculator = None  # as calibrate leaves it for the grid
    forwards = []
    steps = _speculative_steps(llm, speculator, SeenTokenCounts(), forwards)
    assert llm.scheduler.speculator is None and speculator.num_drafts > 0
    assert sum(s.shape.num_draft_logits for s in steps) == speculator.num_draft_tokens
    assert sum(s.shape.num_proposals for s in steps) == speculator.num_proposals
    if "model" in config:
        # each draft token verified came from one row of a logged forward step
        assert sum(len(f.contexts) for f in forwards) >= speculator.num_draft_tokens
        assert speculator.proposer.forward_log is None
    else:
        assert speculator.num_drafts < speculator.num_proposals and not forwards  # some lookups found nothing

"""Async scheduling: the next step is scheduled while one runs, and the outputs are those of the plain step loop."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "jobs"))

from batchserve.engine.llm_engine import LLMEngine
from batchserve.outputs import RequestOutput
from batchserve.request import SamplingParams, StructuredOutputsParams

SMALL_POOL = {"kv_cache_memory": "512KiB", "max_num_batched_tokens": 48, "max_num_seqs": 16}
"""A pool too small for the workload at once (preemptions) and a budget that chunks its longer prompts."""


def workload(seed: int = 0, sampled: bool = True) -> list[tuple[str, dict, SamplingParams]]:
    """Prompts of spread lengths, a third behind one shared prefix; greedy and (seeded) sampled rows, n = 2,
    stop strings, logprobs, prompt logprobs and one-token outputs."""
    rng = random.Random(seed)
    out = []
    for i in range(36):
        prompt = [rng.randrange(1, 250) for _ in range(rng.randrange(3, 110))]
        if i % 3 == 0:
            prompt = [7] * 40 + prompt
        params = SamplingParams(
            max_tokens=1 if i % 11 == 0 else rng.randrange(2, 40), ignore_eos=i % 2 == 0,
            temperature=0.8 if sampled and i % 4 == 1 else 0.0, seed=i, n=2 if i % 5 == 0 else 1,
            stop=["e"] if i % 7 == 3 else None, logprobs=2 if i % 6 == 2 else None,
            prompt_logprobs=1 if i % 9 == 4 else None,
        )
        out.append((str(i), {"prompt_token_ids": prompt}, params))
    return out


def run(engine: LLMEngine, requests: list[tuple[str, dict, SamplingParams]]) -> dict[str, RequestOutput]:
    for request_id, prompt, params in requests:
        engine.add_request(request_id, prompt, params)
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return final


def summary(out: RequestOutput) -> tuple:
    """What a user sees of a finished prompt (timings aside)."""
    return (out.prompt_logprobs, [(c.token_ids, c.text, c.finish_reason, c.logprobs) for c in out.outputs])


@pytest.mark.parametrize("engine_args", [{"kv_cache_memory": "16MiB"}, SMALL_POOL], ids=["roomy", "preempting"])
def test_async_scheduling_gives_the_outputs_of_the_plain_step_loop(engine_args) -> None:
    # Seeded sampled rows draw as without it unless preempted while their step ran (then they recompute
    # without that step's token): the preempting pool runs greedy rows only.
    preempting = engine_args is SMALL_POOL
    requests = workload(sampled=not preempting)
    # batch-invariant numerics: the two loops batch rows differently, and logprobs would differ in their last bits
    plain = run(LLMEngine("tiny", deterministic=True, **engine_args), requests)
    engine = LLMEngine("tiny", async_scheduling=True, deterministic=True, **engine_args)
    seen = []  # every request the engine got, to check their token counts after
    add = engine.engine.add_request
    engine.engine.add_request = lambda req: (seen.append(req), add(req))[-1]
    overlapped = run(engine, requests)
    assert {k: summary(v) for k, v in overlapped.items()} == {k: summary(v) for k, v in plain.items()}
    assert len(overlapped) == len(requests)
    scheduler = engine.scheduler
    assert (scheduler.num_preemptions > 0) == preempting
    assert engine.stats().prefix_cache_hits > 0
    while engine.engine.has_unfinished():  # a last step may still run for rows a stop string ended
        engine.step()
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks and not scheduler.running
    # every request's token count is its tokens: no placeholder is left behind
    assert len(seen) > len(requests)  # the n = 2 prompts' second completions
    assert all(r.num_tokens == len(r.prompt_token_ids) + len(r.output_token_ids) for r in seen)


def test_an_abort_while_its_step_runs_drops_the_row_and_frees_the_blocks() -> None:
    engine = LLMEngine("tiny", async_scheduling=True, kv_cache_memory="16MiB")
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    engine.add_request("a", "first prompt", params)
    engine.add_request("b", "second prompt", params)
    for _ in range(3):
        engine.step()
    assert engine.engine._in_flight is not None  # the next step runs while we abort
    aborted = engine.abort_request("a")
    assert aborted.outputs[0].finish_reason == "abort"
    outputs = run(engine, [])
    alone = run(LLMEngine("tiny", kv_cache_memory="16MiB"), [("b", "second prompt", params)])
    assert summary(outputs["b"]) == summary(alone["b"])
    while engine.engine.has_unfinished():
        engine.step()
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks


def test_grammar_rows_follow_their_grammar_as_without_it() -> None:
    regex = "[a-z]{2,6}( [a-z]{2,6}){1,3}"
    params = SamplingParams(max_tokens=40, temperature=0.0, structured_outputs=StructuredOutputsParams(regex=regex))
    requests = [(str(i), f"prompt {i}", params) for i in range(6)]
    plain = run(LLMEngine("tiny", kv_cache_memory="16MiB"), requests)
    overlapped = run(LLMEngine("tiny", async_scheduling=True, kv_cache_memory="16MiB"), requests)
    assert {k: summary(v) for k, v in overlapped.items()} == {k: summary(v) for k, v in plain.items()}
    # the grammar ends each output (the row after its last token is dropped, not sampled against a done grammar)
    assert all(o.outputs[0].finish_reason == "stop" and re.fullmatch(regex, o.outputs[0].text)
               for o in overlapped.values())


def test_speculative_decoding_is_refused_with_async_scheduling() -> None:
    with pytest.raises(ValueError, match="async_scheduling does not cover speculative decoding"):
        LLMEngine("tiny", async_scheduling=True,
                  speculative_config={"method": "ngram", "num_speculative_tokens": 2})


def test_a_job_with_async_scheduling_writes_the_plain_jobs_answers_and_times_its_steps(tmp_path) -> None:
    from jobfiles import shared_prefix_requests, write_jsonl

    from batchserve.entrypoints.cli import main

    inp = write_jsonl(tmp_path / "in.jsonl", shared_prefix_requests(3, 24, 200, 12))
    answers, summaries = {}, {}
    for mode in ("plain", "async"):
        out, summary = tmp_path / f"{mode}.jsonl", tmp_path / f"{mode}.json"
        flags = ["--async-scheduling"] if mode == "async" else []
        assert main(["run", str(inp), "-o", str(out), "--json", str(summary), "--model", "tiny", "--device", "cpu",
                     "--kv-cache-memory", "4MiB", "-q", *flags]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        answers[mode] = {r["custom_id"]: r["response"]["body"]["choices"] for r in lines}
        summaries[mode] = json.loads(summary.read_text())
    assert answers["async"] == answers["plain"] and len(answers["async"]) == 24
    steps = summaries["async"]["measurements"]["steps"]
    assert steps and all(s["seconds"] > 0 for s in steps)  # each step's own span, for the next estimate
    wall = summaries["async"]["summary"]["wall_s"]
    assert sum(s["seconds"] for s in steps) <= 1.2 * wall  # spans that tile the run, not overlapping calls


@pytest.mark.parametrize("command", ["calibrate", "validate"])
def test_calibrate_and_validate_refuse_async_scheduling(command, tmp_path, capsys) -> None:
    from batchserve.entrypoints.cli import main

    needs = {"calibrate": ["-o", str(tmp_path / "cpu.json")], "validate": ["--hardware", "cpu-local"]}[command]
    assert main([command, "--model", "tiny", "--device", "cpu", "--kv-cache-memory", "16MiB", "--async-scheduling",
                 "-q", *needs]) == 2
    assert "run them without --async-scheduling" in capsys.readouterr().err


def test_real_chat_answers_end_at_eos_as_without_it(smollm2_gguf) -> None:
    """SmolLM2's answers stop at <|im_end|> (random weights almost never end): each finishing request's extra row
    is dropped, and the answers are the plain loop's (batch-invariant numerics: the loops batch rows differently)."""
    from batchserve import LLM

    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?",
                 "Which planet is the largest?"]
    chats = [[{"role": "user", "content": q}] for q in questions]
    params = SamplingParams(temperature=0, max_tokens=24)
    answers = {}
    for overlap in (False, True):
        llm = LLM(str(smollm2_gguf), device="cpu", kv_cache_memory="64MiB", deterministic=True,
                  async_scheduling=overlap)
        answers[overlap] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason)
                            for o in llm.chat(chats, params, use_tqdm=False)]
    assert answers[True] == answers[False]
    assert {reason for _, reason in answers[True]} == {"stop", "length"}  # rows end both ways

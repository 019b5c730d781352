"""Calibration's grid on an engine that serves without prefix caching: the long-context points still reuse one
computed prefix (a 0.5B model's grid otherwise computes 10x the prompt tokens), and the engine keeps serving
without it afterwards."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve.calibration.steps import calibration_phases, prefix_caching, record_steps
from batchserve.engine.llm_engine import LLMEngine
from batchserve.gemm_shapes import SeenTokenCounts
from batchserve.request import Request, SamplingParams


def test_the_grid_reuses_its_prefixes_on_an_engine_serving_without_prefix_caching() -> None:
    llm = LLMEngine("tiny", kv_cache_memory="64MiB", enable_prefix_caching=False)
    kv, sched = llm.scheduler.kv, llm.scheduler.config
    phases = dict(calibration_phases(llm.model_config.max_model_len, llm.model_config.vocab_size,
                                     sched.max_num_batched_tokens, sched.max_num_seqs))
    prefix_label = next(label for label in phases if label.startswith("prefix"))
    context = int(prefix_label.split()[1])
    decode = phases[f"decode x16 at context {context}"]
    seen = SeenTokenCounts()
    with prefix_caching(kv):
        record_steps(llm.engine, phases[prefix_label], seen)
        steps = record_steps(llm.engine, decode, seen)
    # 16 requests of the prefix plus 8 fresh tokens: only the tokens past the cached full blocks are computed
    computed = sum(o.shape.num_prefill_tokens for o in steps)
    assert computed <= 16 * (8 + kv.block_size)
    assert kv.num_hits >= 16 * (context // kv.block_size) * kv.block_size
    # afterwards the engine serves as configured: no hashes kept, no hit on the same prompt
    assert not kv.enable_caching and kv.pool.num_cached_blocks == 0
    hits = kv.num_hits
    prompt, _, _ = decode[0]
    llm.engine.add_request(Request("again", prompt, SamplingParams(max_tokens=1)))
    while llm.engine.has_unfinished():
        llm.engine.step()
    assert kv.num_hits == hits


def test_prefix_caching_leaves_an_engine_that_caches_with_its_cache() -> None:
    llm = LLMEngine("tiny", kv_cache_memory="64MiB")
    kv = llm.scheduler.kv
    prompt = list(range(1, 70))
    with prefix_caching(kv):
        llm.engine.add_request(Request("first", prompt, SamplingParams(max_tokens=1)))
        while llm.engine.has_unfinished():
            llm.engine.step()
    assert kv.enable_caching and kv.pool.num_cached_blocks == len(prompt) // kv.block_size


def test_recorded_steps_count_the_rows_they_sample_though_the_step_has_run() -> None:
    """A step's shape is taken after it ran, when each request holds one more token: the rows that sampled come
    from the batch, so a prompt chunk that completes its prompt counts, and one that does not, does not."""
    llm = LLMEngine("tiny", kv_cache_memory="64MiB", max_num_batched_tokens=64, max_num_seqs=8)
    steps = record_steps(llm.engine, [(list(range(40)), 3, 0), (list(range(100, 190)), 2, 0)], SeenTokenCounts())
    # 40 + 24 (a chunk of the 90-token prompt: only the first samples), 1 decode + 63 more (the decode samples),
    # then 1 decode + the prompt's last 3 (both sample); read from the requests, the prompts' samples were lost
    assert [(o.shape.num_prefill_tokens, o.shape.num_decodes, o.shape.num_sampling) for o in steps[:3]] == [
        (64, 0, 1), (63, 1, 1), (3, 1, 2)]


@pytest.mark.parametrize("max_model_len, max_tokens_per_step", [(2048, 512), (2048, 32), (600, 16), (400, 8)])
def test_no_grid_request_outgrows_the_model(max_model_len: int, max_tokens_per_step: int) -> None:
    """Prompt plus outputs stay within max_model_len for any step budget (a small one keeps the distinct-context
    rows decoding longer while the later ones join: 601 tokens on a 600-token model before the cap)."""
    for label, entries in calibration_phases(max_model_len, 1000, max_tokens_per_step, 64):
        assert all(len(prompt) + outputs <= max_model_len for prompt, outputs, _ in entries), label

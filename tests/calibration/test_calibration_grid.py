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

"""Greedy speculative decoding is token-identical to plain decoding (the target model decides every token).

32 requests on the tiny random Llama with repetitive prompts (so n-gram drafts get accepted), cut by
max_tokens, stop token ids (the EOS path: EOS joins a request's stop ids) and stop strings inside
accepted runs, with and without preemption forced by a small KV pool.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM
from batchserve.outputs import RequestOutput

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1,
         "max_batch_size": 64}  # every step speculates, even with all 32 requests running
MAX_TOKENS = 24


def prompts() -> list[list[int]]:
    motif = [10, 20, 30, 40, 50, 60]
    return [motif * (1 + i % 4) + [70 + i] + motif[: i % 5] for i in range(32)]


def params_from(reference: list[RequestOutput]) -> list[SamplingParams]:
    """Cut each request somewhere inside its reference output, in one of four ways."""
    out = []
    for i, ref in enumerate(reference):
        tokens, text = ref.outputs[0].token_ids, ref.outputs[0].text
        kind = i % 4
        if kind == 0:
            out.append(SamplingParams(max_tokens=5 + i % 11, temperature=0, ignore_eos=True))
        elif kind == 1:  # a token seen mid-output ends it, as EOS would
            out.append(SamplingParams(max_tokens=MAX_TOKENS, temperature=0, stop_token_ids=[tokens[7 + i % 9]]))
        elif kind == 2 and len(text) > 12:
            out.append(SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True, stop=[text[9:12]]))
        else:
            out.append(SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True))
    return out


def assert_same(plain: list[RequestOutput], spec: list[RequestOutput]) -> None:
    for a, b in zip(plain, spec):
        ca, cb = a.outputs[0], b.outputs[0]
        assert (cb.token_ids, cb.text, cb.finish_reason, cb.stop_reason) == (
            ca.token_ids, ca.text, ca.finish_reason, ca.stop_reason), a.request_id


@pytest.mark.parametrize("kv_cache_memory", ["16MiB", "400KiB"], ids=["roomy", "preempting"])
def test_ngram_greedy_matches_plain_decoding(kv_cache_memory: str) -> None:
    plain = LLM("tiny", kv_cache_memory=kv_cache_memory, max_num_batched_tokens=256, max_num_seqs=32)
    reference = plain.generate(prompts(), SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
                               use_tqdm=False)
    params = params_from(reference)
    expected = plain.generate(prompts(), params, use_tqdm=False)
    assert {o.outputs[0].finish_reason for o in expected} == {"length", "stop"}
    assert any(isinstance(o.outputs[0].stop_reason, str) for o in expected)  # a stop string really cut one

    spec = LLM("tiny", kv_cache_memory=kv_cache_memory, max_num_batched_tokens=256, max_num_seqs=32,
               speculative_config=NGRAM)
    got = spec.generate(prompts(), params, use_tqdm=False)
    assert_same(expected, got)
    speculator = spec.llm_engine.speculator
    assert speculator.num_accepted_tokens > 0
    if kv_cache_memory == "400KiB":
        assert spec.scheduler.num_preemptions > 0
    kv = spec.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks  # every block, rolled back or not, came home

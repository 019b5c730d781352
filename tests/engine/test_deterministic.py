"""deterministic=True: a request's tokens and logprobs are bit-identical alone, among batch-mates and after preemption."""

from __future__ import annotations

import random

import pytest

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM


def _logprobs(out) -> list[float]:
    completion = out.outputs[0]
    return [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]


def test_tiny_bf16_rows_do_not_depend_on_their_batch(tmp_path):
    """Random-weight model in bfloat16, chunked prefill (24-token budget) and a cache small enough to preempt."""
    rng = random.Random(0)
    probe = [rng.randrange(1, 256) for _ in range(40)]
    mates = [[rng.randrange(1, 256) for _ in range(rng.randint(3, 60))] for _ in range(9)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0)

    def run(prompts, cache):
        llm = LLM("tiny", dtype="bfloat16", device="cpu", kv_cache_memory=cache, max_num_batched_tokens=24,
                  max_num_seqs=16, deterministic=True)
        return llm.generate(prompts, params, use_tqdm=False)

    (alone,) = run([probe], "4MiB")
    batched = run(mates[:5] + [probe] + mates[5:], "4MiB")[5]
    preempted = run(mates[:5] + [probe] + mates[5:], "48KiB")
    assert sum(o.metrics.num_preemptions for o in preempted) > 0
    for other in (batched, preempted[5]):
        assert other.outputs[0].token_ids == alone.outputs[0].token_ids
        assert _logprobs(other) == _logprobs(alone)  # bit-identical, not merely close


def test_deterministic_mode_refuses_lora():
    with pytest.raises(ValueError, match="deterministic=True does not cover LoRA adapters yet"):
        LLM("tiny", device="cpu", deterministic=True, enable_lora=True)

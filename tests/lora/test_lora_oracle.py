"""Adapters in one mixed batch against transformers + PEFT (adapter applied, not merged), token for token."""

from __future__ import annotations

import random

import pytest

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM

MAX_NEW = 8
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True)
MIXED = ["r4-qv", "r8-all", None, "r16-mlp", "r4-qv", "r8-all", None, "r16-mlp"]  # interleaved: split segments


def prompts(n: int, seed: int, vocab: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(3, 30))] for _ in range(n)]


def llm(family, **args) -> LLM:
    return LLM(str(family.path), skip_tokenizer_init=True, kv_cache_memory="16MiB", enable_lora=True,
               max_loras=3, max_lora_rank=16, **args)


@pytest.mark.parametrize("engine_args", [{}, {"max_num_batched_tokens": 16, "max_num_seqs": 8}],
                         ids=["default", "chunked"])
def test_mixed_batch_matches_peft_and_each_request_alone(family, hf_greedy, engine_args) -> None:
    batch = prompts(len(MIXED), seed=0, vocab=family.vocab)
    expected = [hf_greedy(family.reference(name), p, MAX_NEW) for name, p in zip(MIXED, batch)]
    engine = llm(family, **engine_args)
    loras = [family.lora(name) for name in MIXED]
    mixed = [o.outputs[0].token_ids for o in engine.generate(batch, GREEDY, use_tqdm=False, lora_request=loras)]
    assert mixed == expected
    alone = [engine.generate(p, GREEDY, use_tqdm=False, lora_request=lora)[0].outputs[0].token_ids
             for p, lora in zip(batch, loras)]
    assert alone == mixed
    assert len(set(map(tuple, expected))) > len(batch) // 2  # the adapters really change the tokens


def test_base_rows_of_a_mixed_batch_equal_the_base_model_alone(family) -> None:
    batch = prompts(len(MIXED), seed=1, vocab=family.vocab)
    base_only = LLM(str(family.path), skip_tokenizer_init=True, kv_cache_memory="16MiB")
    expected = [o.outputs[0].token_ids for o in base_only.generate(batch, GREEDY, use_tqdm=False)]
    outs = llm(family).generate(batch, GREEDY, use_tqdm=False, lora_request=[family.lora(n) for n in MIXED])
    for name, want, out in zip(MIXED, expected, outs):
        if name is None:
            assert out.outputs[0].token_ids == want
        else:
            assert out.outputs[0].token_ids != want  # the adapters do change these rows

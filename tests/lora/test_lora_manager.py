"""Adapters in device slots and host memory: the prefix cache keyed by adapter, LRU swapping under max_loras."""

from __future__ import annotations

import random

from batchserve import SamplingParams
from batchserve.engine.llm_engine import LLMEngine
from batchserve.entrypoints.llm import LLM

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def test_prefix_cache_is_shared_within_an_adapter_never_across(llama_family) -> None:
    rng = random.Random(0)
    prompt = [rng.randrange(llama_family.vocab) for _ in range(40)]  # two full blocks of 16 before the last token
    llm = LLM(str(llama_family.path), skip_tokenizer_init=True, kv_cache_memory="16MiB", enable_lora=True,
              max_loras=2)
    kv = llm.scheduler.kv
    a, b = llama_family.lora("r4-qv"), llama_family.lora("r8-all")

    def hits(lora) -> int:
        before = kv.num_hits
        llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=lora)
        return kv.num_hits - before

    assert hits(a) == 0
    assert hits(b) == 0  # same tokens, another adapter: its KV differs, nothing is reused
    assert hits(None) == 0  # the base model is a third, separate cache key
    assert hits(a) == 32  # the same adapter again: both full blocks come from the cache
    assert hits(b) == 32


def test_five_adapters_through_two_slots_all_complete_and_match_peft(llama_family, hf_greedy) -> None:
    names = list(llama_family.adapters) * 2  # 10 requests, 5 adapters, interleaved
    rng = random.Random(1)
    batch = [[rng.randrange(llama_family.vocab) for _ in range(rng.randint(4, 20))] for _ in names]
    engine = LLMEngine(str(llama_family.path), skip_tokenizer_init=True, kv_cache_memory="16MiB", enable_lora=True,
                       max_loras=2, max_cpu_loras=3, max_lora_rank=16)
    for i, (name, prompt) in enumerate(zip(names, batch)):
        engine.add_request(str(i), prompt, GREEDY, lora_request=llama_family.lora(name))
    manager = engine.lora_manager
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        running = {r.adapter_id for r in engine.scheduler.running}
        assert len(manager.resident) <= 2 and len(manager.step.segments) <= 2 and len(running) <= 2
    assert len(done) == len(names)
    for i, (name, prompt) in enumerate(zip(names, batch)):
        assert done[str(i)] == hf_greedy(llama_family.reference(name), prompt, GREEDY.max_tokens)
    assert manager.num_slot_loads > 2  # slots were reused for other adapters
    assert manager.num_disk_loads > len(llama_family.adapters)  # the host LRU (3) dropped some and they were re-read
    assert len(manager.cached) <= 3

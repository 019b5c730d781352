"""Aborting a prompt whose `n` completions have partly finished (found by the server's fuzzer)."""

from __future__ import annotations

from batchserve.engine.llm_engine import LLMEngine
from batchserve.request import SamplingParams


def test_abort_after_one_of_n_completions_finished_frees_everything():
    engine = LLMEngine("tiny", kv_cache_memory="16MiB")
    pool = engine.scheduler.kv.pool
    for seed in range(50):  # find a seed where one completion stops while the other still runs
        params = SamplingParams(n=2, max_tokens=200, seed=seed, stop_token_ids=list(range(0, 256, 16)))
        engine.add_request(str(seed), "prompt", params)
        while engine.has_unfinished():
            (out,) = engine.step() or [None]
            if out is not None and sum(c.finish_reason is not None for c in out.outputs) == 1:
                aborted = engine.abort_request(str(seed))
                assert [c.finish_reason for c in aborted.outputs].count("abort") == 1
                assert not engine.has_unfinished() and not engine.scheduler.running
                assert pool.num_free_blocks == pool.num_blocks
                return
    raise AssertionError("no seed gave a partly finished prompt")

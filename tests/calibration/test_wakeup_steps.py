"""calibrate's wake-up steps: a step run after the engine idled is marked, and only that one."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve.calibration.steps import record_steps, wakeup_phases
from batchserve.engine.llm_engine import LLMEngine
from batchserve.gemm_shapes import SeenTokenCounts


def test_only_the_step_after_an_idle_engine_is_a_wakeup() -> None:
    llm = LLMEngine("tiny", kv_cache_memory="16MiB", skip_tokenizer_init=True)
    vocab = llm.model_config.vocab_size
    # two requests: one at step 0 (the engine is idle), one joining at step 2 (the engine is busy)
    entries = [([1, 2, 3, 4], 4, 0), ([5, 6, 7], 2, 2)]
    observed = record_steps(llm.engine, entries, SeenTokenCounts(), idle_s=0.01)
    assert [o.shape.num_wakeups for o in observed] == [1, 0, 0, 0]
    assert observed[0].shape.num_prefill_tokens == 4 and observed[2].shape.num_prefill_tokens == 3
    assert all(o.seconds > 0 for o in observed)
    assert not any(o.shape.num_wakeups for o in record_steps(llm.engine, entries, SeenTokenCounts()))
    phases = list(wakeup_phases(vocab, outputs=4))
    # the first request's prompt: the sizes calibrate also runs back to back; a second joins the busy engine
    assert sorted({len(first[0]) for first, _ in phases}) == [16, 64, 256]
    observed = record_steps(llm.engine, phases[0], SeenTokenCounts(), idle_s=0.01)
    assert [(o.shape.num_wakeups, o.shape.num_prefill_tokens, o.shape.num_decodes) for o in observed] == [
        (1, 16, 0), (0, 0, 1), (0, 32, 1), (0, 0, 2)]

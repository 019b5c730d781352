"""`LLMEngine`: the add_request / step / abort_request loop that batch jobs and the server drive."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve import SamplingParams  # noqa: E402
from batchserve.llm_engine import LLMEngine  # noqa: E402


@pytest.fixture()
def engine() -> LLMEngine:
    return LLMEngine("tiny", kv_cache_memory="16MiB")


def _drain(engine: LLMEngine) -> dict[str, list]:
    """Every output each request id received, in order."""
    seen: dict[str, list] = {}
    while engine.has_unfinished():
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    return seen


def test_streamed_outputs_grow_and_end_with_the_final_text(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=3, ignore_eos=True, n=2)
    engine.add_request("a", "hello there", params)
    engine.add_request("b", [256, 1, 2, 3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    seen = _drain(engine)
    assert set(seen) == {"a", "b"}
    stream = seen["a"]
    assert [o.finished for o in stream].count(True) == 1 and stream[-1].finished
    for earlier, later in zip(stream, stream[1:]):
        for e, l in zip(earlier.outputs, later.outputs):
            assert l.token_ids[: len(e.token_ids)] == e.token_ids and l.text.startswith(e.text)
    final = stream[-1]
    assert [len(c.token_ids) for c in final.outputs] == [12, 12]
    m = final.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finish_time <= engine.now


def test_abort_frees_blocks_at_once_and_leaves_others_running(engine: LLMEngine) -> None:
    free0 = engine.scheduler.kv.num_free_blocks
    long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    engine.add_request("keep", "x" * 40, long)
    engine.add_request("drop", "y" * 300, long)
    for _ in range(3):
        engine.step()
    held = engine.scheduler.kv.num_free_blocks
    out = engine.abort_request("drop")
    assert out is not None and out.finished and out.outputs[0].finish_reason == "abort"
    assert engine.scheduler.kv.num_free_blocks >= held + 300 // 16
    assert engine.abort_request("drop") is None  # aborting twice is a no-op
    seen = _drain(engine)
    assert set(seen) == {"keep"} and len(seen["keep"][-1].outputs[0].token_ids) == 200
    assert engine.scheduler.kv.num_free_blocks == free0  # cached blocks count as free


def test_bad_requests_are_rejected_before_anything_is_queued(engine: LLMEngine) -> None:
    ctx = engine.model_config.max_model_len
    with pytest.raises(ValueError, match=str(ctx)):
        engine.add_request("long", [1] * (ctx + 5), SamplingParams(max_tokens=4))
    engine.add_request("x", "hi", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="already running"):
        engine.add_request("x", "hi", SamplingParams(max_tokens=2))
    assert engine.num_unfinished == 1 and len(engine.scheduler.waiting) == 1


def test_stats_count_computed_prompt_tokens_and_prefix_hits(engine: LLMEngine) -> None:
    shared = [256] + list(range(1, 161))  # 10 full blocks
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    engine.add_request("first", shared + [7, 8], params)
    _drain(engine)
    engine.add_request("second", shared + [9, 10, 11], params)
    _drain(engine)
    stats = engine.stats()
    assert stats.prefix_cache_queries == 2 * 161 + 5
    assert stats.prefix_cache_hits == 160
    assert stats.computed_prompt_tokens == (161 + 2) + (3 + 1)  # the second computes its suffix only
    assert stats.generation_tokens == 4 and stats.num_running == stats.num_waiting == 0


def test_attention_knobs_reach_every_step_and_keep_greedy_output() -> None:
    from batchserve.models import AttentionConfig

    outputs = []
    for ratio in (0.7, 1.0):
        engine = LLMEngine("tiny", kv_cache_memory="16MiB", attention=AttentionConfig(decode_bucket_ratio=ratio))
        assert engine.executor.attention.decode_bucket_ratio == ratio
        for i, prompt in enumerate(("a", "a much longer prompt than the first", "mid-sized one")):
            engine.add_request(str(i), prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        outputs.append({rid: outs[-1].outputs[0].token_ids for rid, outs in _drain(engine).items()})
    assert outputs[0] == outputs[1]  # bucketing changes only how decodes are padded, never what they compute

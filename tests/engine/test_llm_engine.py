"""`LLMEngine`: the add_request / step / abort_request loop that batch jobs and the server drive."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve import SamplingParams  # noqa: E402
from batchserve.engine.llm_engine import LLMEngine  # noqa: E402


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


def test_max_model_len_caps_sequences_and_changes_no_logits(engine: LLMEngine) -> None:
    capped = LLMEngine("tiny", kv_cache_memory="16MiB", max_model_len=64)
    assert capped.model_config.max_model_len == 64 and engine.model_config.max_model_len == 2048
    with pytest.raises(ValueError, match="max_model_len=64"):
        capped.add_request("long", [1] * 60, SamplingParams(max_tokens=8))
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    for e in (capped, engine):
        e.add_request("fits", [5, 6, 7] * 10, greedy)
    assert _drain(capped)["fits"][-1].outputs[0].token_ids == _drain(engine)["fits"][-1].outputs[0].token_ids
    with pytest.raises(ValueError, match="serves at most 2048 tokens"):
        LLMEngine("tiny", kv_cache_memory="16MiB", max_model_len=4096)


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


PROMPT_256 = [256] + [(7 * i) % 250 + 1 for i in range(255)]  # 16 full blocks


def _final(engine: LLMEngine, request_id: str):
    return _drain(engine)[request_id][-1]


def test_n_completions_compute_the_prompt_once_and_sample_as_if_alone(engine: LLMEngine) -> None:
    params = SamplingParams(n=4, max_tokens=20, temperature=1.0, seed=11, ignore_eos=True)
    engine.add_request("shared", PROMPT_256, params)
    assert engine.stats().num_waiting == 4  # three of them held until the first computed the prompt
    out = _final(engine, "shared")
    stats = engine.stats()
    tail = 16  # the last full block holds the last token, whose logits each completion needs
    assert stats.computed_prompt_tokens == 256 + 3 * tail
    assert stats.prefix_cache_hits == 3 * (256 - tail)
    assert out.num_cached_tokens == 0  # the prompt counts once, and the first completion computed it
    alone = LLMEngine("tiny", kv_cache_memory="16MiB", enable_prefix_caching=False)
    for k in range(4):
        alone.add_request(str(k), PROMPT_256, SamplingParams(max_tokens=20, temperature=1.0, seed=11 + k,
                                                             ignore_eos=True))
    solo = {rid: outs[-1].outputs[0].token_ids for rid, outs in _drain(alone).items()}
    assert [c.token_ids for c in out.outputs] == [solo[str(k)] for k in range(4)]
    engine.add_request("again", PROMPT_256, params)
    again = _final(engine, "again")
    assert again.num_cached_tokens == 256 - tail and [c.token_ids for c in again.outputs] == [
        c.token_ids for c in out.outputs]


def test_aborting_a_prompt_mid_prefill_aborts_its_held_completions() -> None:
    engine = LLMEngine("tiny", kv_cache_memory="16MiB", max_num_batched_tokens=64, max_num_seqs=8)
    pool = engine.scheduler.kv.pool
    engine.add_request("n3", PROMPT_256, SamplingParams(n=3, max_tokens=8, ignore_eos=True))
    engine.step()  # the first 64 prompt tokens of the first completion
    out = engine.abort_request("n3")
    assert out.finished and [c.finish_reason for c in out.outputs] == ["abort"] * 3
    assert not engine.has_unfinished() and not engine.scheduler.has_unfinished()
    assert engine.stats().num_waiting == 0 and pool.num_free_blocks == pool.num_blocks


def test_a_lead_preempted_mid_prefill_releases_its_held_completions() -> None:
    # 12 blocks: "a" grows to 11 of them, so the first completion of "b" is preempted mid-prefill
    engine = LLMEngine("tiny", kv_cache_memory="96KiB", max_num_batched_tokens=8, max_num_seqs=4)
    pool = engine.scheduler.kv.pool
    engine.add_request("a", [256] + list(range(1, 160)), SamplingParams(max_tokens=16, ignore_eos=True))
    engine.add_request("b", [256] + list(range(100, 139)), SamplingParams(n=3, max_tokens=8, ignore_eos=True))
    lead = engine.output_processor.requests("b")[0]
    finals = {rid: outs[-1] for rid, outs in _drain(engine).items()}
    assert lead.num_preemptions > 0
    assert [len(c.token_ids) for c in finals["b"].outputs] == [8, 8, 8] and finals["b"].finished
    assert len(finals["a"].outputs[0].token_ids) == 16
    assert pool.num_free_blocks == pool.num_blocks


def test_attention_knobs_reach_every_step_and_keep_greedy_output() -> None:
    from batchserve.models import AttentionConfig

    outputs = []
    for ratio in (0.7, 1.0, 0.0):  # 0: every decode row in one padded call
        engine = LLMEngine("tiny", kv_cache_memory="16MiB", attention=AttentionConfig(decode_bucket_ratio=ratio))
        assert engine.executor.attention.decode_bucket_ratio == ratio
        for i, prompt in enumerate(("a", "a much longer prompt than the first", "mid-sized one")):
            engine.add_request(str(i), prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        outputs.append({rid: outs[-1].outputs[0].token_ids for rid, outs in _drain(engine).items()})
    assert outputs[0] == outputs[1] == outputs[2]  # bucketing changes how decodes are padded, not what they compute


def test_a_cuda_flex_engine_refuses_a_block_size_triton_cannot_tile() -> None:
    """Checked before the weights load or CUDA starts, so it holds on a machine without a GPU."""
    with pytest.raises(ValueError, match="flex attention backend on CUDA needs block_size a multiple of 16.*got 8"):
        LLMEngine("tiny", device="cuda", attention_backend="flex", block_size=8, kv_cache_memory="16MiB")


def test_the_cpp_attention_backend_is_refused_off_a_cpu() -> None:
    with pytest.raises(ValueError, match="cpp attention backend is a CPU kernel; on cuda use the torch or flex"):
        LLMEngine("tiny", device="cuda", attention_backend="cpp", kv_cache_memory="16MiB")

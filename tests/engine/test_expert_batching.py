"""Expert-aware batching: MoE decode batches sized for tokens per expert, with the same greedy tokens."""

from __future__ import annotations

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

from batchserve.config import expert_batching
from batchserve.engine.llm_engine import LLMEngine
from batchserve.entrypoints.llm import LLM
from batchserve.jobs.setup import RunSetup
from batchserve.request import SamplingParams


@given(seqs=st.integers(1, 512), extra=st.integers(0, 512), experts=st.integers(1, 256), data=st.data(),
       target=st.integers(1, 128))
def test_the_smallest_batch_at_or_above_the_target_rows_per_expert(seqs, extra, experts, data, target) -> None:
    top_k = data.draw(st.integers(1, experts))
    new_seqs, budget = expert_batching(seqs, seqs + extra, experts, top_k, target)
    assert new_seqs >= seqs and budget >= max(seqs + extra, new_seqs)
    assert new_seqs * top_k / experts >= target
    if new_seqs > seqs:  # raised: to the smallest batch that reaches the target, the budget only as far as needed
        assert (new_seqs - 1) * top_k / experts < target
        assert budget == max(seqs + extra, new_seqs)


def test_off_or_dense_leaves_the_limits_and_a_negative_target_is_refused() -> None:
    assert expert_batching(8, 64, 16, 2, 0) == (8, 64)
    assert expert_batching(8, 64, 0, 0, 32) == (8, 64)
    assert expert_batching(8, 64, 16, 2, 4) == (32, 64)
    with pytest.raises(ValueError, match="target_tokens_per_expert must be >= 0"):
        expert_batching(8, 64, 16, 2, -1)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> str:
    config = transformers.MixtralConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                        num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=256)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mixtral")
    transformers.MixtralForCausalLM(config).save_pretrained(path)
    return str(path)


def _decode_batches(engine: LLM, prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Greedy tokens of each prompt, and the number of requests of every step."""
    sizes: list[int] = []
    schedule = engine.scheduler.schedule

    def recording(*args):
        batch = schedule(*args)
        sizes.append(len(batch.requests))
        return batch

    engine.scheduler.schedule = recording
    outs = engine.generate(prompts, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], sizes


def test_moe_decode_batches_grow_to_the_target_and_greedy_tokens_stay(mixtral) -> None:
    prompts = [[(7 * i + j) % 256 for j in range(5 + 3 * i)] for i in range(8)]
    plain = LLM(mixtral, device="cpu", skip_tokenizer_init=True, max_num_seqs=2, max_num_batched_tokens=64)
    batched = LLM(mixtral, device="cpu", skip_tokenizer_init=True, max_num_seqs=2, max_num_batched_tokens=64,
                        target_tokens_per_expert=2)
    assert batched.scheduler.config.max_num_seqs == 8  # 2 rows for each of 8 experts at top-2
    tokens, sizes = _decode_batches(plain, prompts)
    batched_tokens, batched_sizes = _decode_batches(batched, prompts)
    assert max(sizes) == 2 and max(batched_sizes) == 8
    assert batched_tokens == tokens


def test_a_dense_model_refuses_the_target() -> None:
    with pytest.raises(ValueError, match="dense model; drop it"):
        LLMEngine("tiny", device="cpu", target_tokens_per_expert=4)


def test_the_jobs_twin_schedules_the_raised_batch(mixtral) -> None:
    setup = RunSetup(model=mixtral, device="cpu", kv_cache_memory="1MiB", max_num_seqs=2, max_num_batched_tokens=64,
                     target_tokens_per_expert=4)
    engine = LLMEngine(setup.model, skip_tokenizer_init=True, **setup.engine_args())
    assert engine.scheduler.config.max_num_seqs == 16
    assert setup.sim_setup("cpu-local").scheduler == engine.scheduler.config

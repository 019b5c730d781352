"""The draft-model proposer: greedy outputs identical to plain decoding, its KV blocks all come back,
and a draft with another vocabulary or tokenizer is refused at load.

The target is a random 2-layer Llama checkpoint; the draft is its first layer alone (same embeddings
and head), so its guesses are often but not always the target's.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM

VOCAB = 300
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 512}


def save_llama(path, num_layers: int, vocab: int = VOCAB, weights: dict | None = None):
    config = transformers.LlamaConfig(vocab_size=vocab, num_hidden_layers=num_layers, **SHAPE)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    target_dir, draft_dir = tmp_path_factory.mktemp("target"), tmp_path_factory.mktemp("draft")
    target = save_llama(target_dir, 2)
    first_layer = {k: v for k, v in target.state_dict().items() if ".layers.1." not in k}
    save_llama(draft_dir, 1, weights=first_layer)
    return str(target_dir), str(draft_dir)


def prompts() -> list[list[int]]:
    return [[(7 * i + j) % VOCAB for j in range(5 + i % 7)] * 2 for i in range(32)]


@pytest.mark.parametrize("kv_cache_memory", ["8MiB", "96KiB"], ids=["roomy", "preempting"])
def test_draft_model_greedy_matches_plain_decoding(checkpoints, kv_cache_memory):
    target, draft = checkpoints
    params = [SamplingParams(max_tokens=6 + i % 13, temperature=0, ignore_eos=True,
                             stop_token_ids=[(11 * i) % VOCAB] if i % 3 == 0 else []) for i in range(32)]
    common = {"skip_tokenizer_init": True, "kv_cache_memory": kv_cache_memory, "max_num_seqs": 32}
    expected = LLM(target, **common).generate(prompts(), params, use_tqdm=False)
    spec = LLM(target, **common, speculative_config={"model": draft, "num_speculative_tokens": 3,
                                                           "max_batch_size": 64})
    got = spec.generate(prompts(), params, use_tqdm=False)
    for a, b in zip(expected, got):
        assert (b.outputs[0].token_ids, b.outputs[0].finish_reason) == (a.outputs[0].token_ids,
                                                                        a.outputs[0].finish_reason)
    speculator = spec.llm_engine.speculator
    assert 0 < speculator.num_accepted_tokens < speculator.num_draft_tokens
    if kv_cache_memory == "96KiB":
        assert spec.scheduler.num_preemptions > 0
    pool = speculator.proposer.pool
    assert pool.num_free_blocks == pool.num_blocks  # every finished request gave its draft blocks back


def test_a_draft_with_another_vocabulary_is_refused(checkpoints, tmp_path):
    save_llama(tmp_path, 1, vocab=VOCAB + 20)
    with pytest.raises(ValueError, match="vocabulary of 320 tokens, the target 300"):
        LLM(checkpoints[0], skip_tokenizer_init=True, speculative_config={"model": str(tmp_path)})


def test_a_draft_with_another_tokenizer_is_refused(smollm2_gguf):
    with pytest.raises(ValueError, match="tokenizes text differently"):
        LLM("tiny", speculative_config={"model": str(smollm2_gguf)})


def test_draft_and_ngram_configs_say_what_they_need():
    with pytest.raises(ValueError, match='"draft" needs a "model"'):
        LLM("tiny", speculative_config={"method": "draft"})


class _Twin:
    """The engine's draft proposer and the simulator's, asked for the same drafts each step: per call, the
    forward steps the simulator prices (`draft_step_shapes`) beside those the draft model ran."""

    def __init__(self, real, sim) -> None:
        self.real, self.sim, self.calls = real, sim, []
        real.forward_log = []

    def propose(self, requests, k):
        from batchserve.sim.speculation import draft_step_shape, draft_step_shapes

        self.sim.propose(requests, k)
        start = len(self.real.forward_log)
        drafts = self.real.propose(requests, k)
        ran = [draft_step_shape(f.contexts, f.fed, self.real.attention) for f in self.real.forward_log[start:]]
        self.calls.append((draft_step_shapes(self.sim.take_proposals(), self.real.attention), ran))
        return drafts

    def release(self, request) -> None:
        self.sim.release(request)
        self.real.release(request)


def test_the_simulator_prices_the_forward_steps_the_draft_model_runs(checkpoints):
    """Over a greedy run of 32 requests, 4 at a time (drafts rejected and rolled back, prompts fed after prefills), every
    propose call's forward steps, each one's rows, contexts and new tokens, are those the simulator charges."""
    from batchserve.sim.speculation import SimProposer

    target, draft = checkpoints
    spec = LLM(target, skip_tokenizer_init=True, kv_cache_memory="8MiB", max_num_seqs=4,
               speculative_config={"model": draft, "num_speculative_tokens": 3, "max_batch_size": 64})
    speculator = spec.llm_engine.speculator
    twin = speculator.proposer = _Twin(speculator.proposer, SimProposer())
    params = [SamplingParams(max_tokens=6 + i % 13, temperature=0, ignore_eos=True) for i in range(32)]
    spec.generate(prompts(), params, use_tqdm=False)
    assert speculator.num_accepted_tokens < speculator.num_draft_tokens  # some drafts were rolled back
    assert sum(len(ran) for _, ran in twin.calls) > 32
    for priced, ran in twin.calls:
        assert priced == ran


def test_the_draft_cache_comes_out_of_the_kv_cache_budget(checkpoints):
    """kv_cache_memory holds the target's blocks and the draft's (one for each) together, as vLLM counts them."""
    from batchserve.model_config import kv_bytes_per_block

    target, draft = checkpoints
    plain = LLM(target, skip_tokenizer_init=True, kv_cache_memory="1MiB").llm_engine
    spec = LLM(target, skip_tokenizer_init=True, kv_cache_memory="1MiB",
               speculative_config={"model": draft, "num_speculative_tokens": 3}).llm_engine
    proposer = spec.speculator.proposer
    per_block = [kv_bytes_per_block(config, 16, 4) for config in (spec.model_config, proposer.config)]
    num_blocks = spec.scheduler.kv.pool.num_blocks
    assert proposer.pool.num_blocks == num_blocks
    assert num_blocks == 2**20 // sum(per_block)  # 2 target layers + 1 draft layer: 2/3 of the plain engine's
    assert plain.scheduler.kv.pool.num_blocks == 2**20 // per_block[0]

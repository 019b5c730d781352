"""The real engine against Hugging Face transformers on the same random weights.

For each supported architecture a small random model is built and saved with
transformers' own `save_pretrained`; batchserve's greedy tokens must equal
transformers' greedy `generate` for a batch of prompts of different lengths,
also with prefix caching, with every prefill chunked, and with a KV pool
small enough to force preemptions (on both attention backends, with async scheduling, and with compiled
decode steps).
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from random_weights import randomize  # noqa: E402

from batchserve import SamplingParams  # noqa: E402
from batchserve.entrypoints.llm import LLM  # noqa: E402
from batchserve.model_config import kv_bytes_per_block  # noqa: E402

VOCAB = 300
MAX_NEW = 10
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    # MoE: 8 experts, top-2; Qwen2-MoE with its shared expert and a dense layer, Qwen3-MoE renormalising its top-k
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 8, "num_experts_per_tok": 2}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 64, "num_hidden_layers": 3, "mlp_only_layers": [1]}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16,
                   "norm_topk_prob": True}),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def hf_model(request, tmp_path_factory):
    config_cls, model_cls, extra = ARCHS[request.param]
    config = getattr(transformers, config_cls)(**{**SHAPE, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    if getattr(config, "num_experts", 0):
        randomize(model)  # HF's 0.02 init routes almost uniformly, which would hide router bugs
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, path


def prompts(n: int = 8, shared: int = 0, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(VOCAB) for _ in range(shared)]
    return [prefix + [rng.randrange(VOCAB) for _ in range(rng.randint(3, 40))] for _ in range(n)]


def hf_greedy(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW,
                             min_new_tokens=MAX_NEW, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def ours(path, batch: list[list[int]], **engine_args) -> list[list[int]]:
    llm = LLM(str(path), skip_tokenizer_init=True, **{"kv_cache_memory": "64MiB", **engine_args})
    outs = llm.generate(batch, SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm


@pytest.mark.parametrize(
    "engine_args",
    [
        {},
        {"max_num_batched_tokens": 16, "max_num_seqs": 8},  # every prompt longer than 16 tokens is chunked
    ],
    ids=["default", "chunked"],
)
def test_greedy_matches_transformers(hf_model, engine_args) -> None:
    model, path = hf_model
    batch = prompts()
    expected = [hf_greedy(model, p) for p in batch]
    got, _ = ours(path, batch, **engine_args)
    assert got == expected


@pytest.mark.parametrize("attention_backend, async_scheduling, enforce_eager",
                         [("torch", False, True), ("flex", False, True), ("torch", True, True),
                          ("torch", False, False)],
                         ids=["torch", "flex", "torch-async", "torch-compiled"])
def test_greedy_matches_with_prefix_caching_and_preemption(hf_model, attention_backend, async_scheduling,
                                                           enforce_eager) -> None:
    """Compiled decode steps (enforce_eager=False; tests/models/test_compiled_decode.py covers them at length on
    Llama) here on every architecture, for what the compiled graph sees of each: biases, q/k norms, tied heads,
    routed experts (one opaque op in the graph, models/moe.routed_experts)."""
    model, path = hf_model
    if attention_backend == "flex" and model.config.model_type != "llama":
        pytest.skip("the flex backend is architecture-blind; one architecture keeps its compile time out of the suite")
    batch = prompts(shared=37, seed=1)  # a 37-token shared prefix: two full blocks of 16 to reuse
    expected = [hf_greedy(model, p) for p in batch]
    llm_cfg = LLM(str(path), skip_tokenizer_init=True, kv_cache_memory="1MiB").model_config
    per_block = int(kv_bytes_per_block(llm_cfg, 16, torch.float32.itemsize))
    # 10 blocks of 16 tokens: the 8 requests (~55-90 tokens each) cannot all run at once
    got, llm = ours(path, batch, kv_cache_memory=10 * per_block, attention_backend=attention_backend,
                    async_scheduling=async_scheduling, enforce_eager=enforce_eager)
    assert got == expected
    assert llm.scheduler.num_preemptions > 0
    assert llm.scheduler.kv.num_hits > 0  # the shared prefix was served from the cache
    assert llm.scheduler.kv.num_free_blocks == llm.scheduler.kv.num_blocks  # nothing leaked


def test_generation_config_supplies_default_sampling(hf_model, tmp_path) -> None:
    import json
    import shutil

    _, path = hf_model
    local = tmp_path / "model"
    shutil.copytree(path, local)
    (local / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.8, "top_k": 20}))
    llm = LLM(str(local), skip_tokenizer_init=True, kv_cache_memory="1MiB")
    d = llm.default_sampling_params
    assert (d.temperature, d.top_p, d.top_k) == (0.6, 0.8, 20)
    (local / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    assert LLM(str(local), skip_tokenizer_init=True, kv_cache_memory="1MiB").default_sampling_params.temperature == 0.0


def test_prompt_logprobs_match_transformers(hf_model) -> None:
    """Every prompt token's logprob equals transformers' log_softmax, also chunked and with a shared prefix."""
    model, path = hf_model
    batch = prompts(n=4, shared=37, seed=2)
    llm = LLM(str(path), skip_tokenizer_init=True, kv_cache_memory="64MiB", max_num_batched_tokens=16,
              max_num_seqs=8)
    outs = llm.generate(batch, SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=3), use_tqdm=False)
    for prompt, out in zip(batch, outs):
        with torch.no_grad():
            expected = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)
        got = out.prompt_logprobs
        assert got[0] is None and len(got) == len(prompt)
        for pos in range(1, len(prompt)):
            entry = got[pos]
            assert entry[prompt[pos]].logprob == pytest.approx(expected[pos - 1, prompt[pos]].item(), abs=1e-4)
            top = expected[pos - 1].topk(3).indices.tolist()
            assert set(top) <= set(entry)
    assert llm.scheduler.kv.num_hits == 0  # prompt logprobs need every position computed


def test_logit_bias_bans_and_forces_tokens(hf_model) -> None:
    _, path = hf_model
    batch = prompts(n=3, seed=3)
    greedy, llm = ours(path, batch)
    banned = {t: -100.0 for toks in greedy for t in toks}
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True, logit_bias=banned)
    for out in llm.generate(batch, params, use_tqdm=False):
        assert not set(out.outputs[0].token_ids) & set(banned)
    forced = SamplingParams(max_tokens=4, temperature=1.0, seed=1, ignore_eos=True, logit_bias={7: 100.0})
    assert all(o.outputs[0].token_ids == [7] * 4 for o in llm.generate(batch, forced, use_tqdm=False))

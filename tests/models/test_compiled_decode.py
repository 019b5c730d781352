"""Compiled steps (torch.compile) against eager steps and transformers: decode steps, the flex attention backend.

One compiled engine serves a 200-request run of varied prompt and output
lengths in a KV pool small enough to force preemptions: its greedy tokens must
equal the eager engine's for every request and transformers' for a sample, and
the number of graphs compiled must stay bounded (batch 1 and batch > 1), not
grow with the shapes seen. Compilation is the slow part, so it happens once.
The same run on the flex attention backend (a compiled kernel inside eager
steps) holds it to the same bounds.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch._dynamo.utils import counters

from batchserve import SamplingParams
from batchserve.entrypoints.llm import LLM
from batchserve.model_config import kv_bytes_per_block

VOCAB = 300
SHAPE = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
NUM_REQUESTS = 200
MAX_GRAPHS = 2  # dynamic shapes: one graph for batch 1 (torch specializes size 1), one for every larger batch


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    return model, path


def workload(seed: int = 0) -> tuple[list[list[int]], list[SamplingParams]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(VOCAB) for _ in range(20)]  # a shared prefix: some steps run on cached context
    prompts = [(prefix if i % 3 == 0 else []) + [rng.randrange(VOCAB) for _ in range(rng.randint(2, 60))]
               for i in range(NUM_REQUESTS)]
    params = [SamplingParams(max_tokens=rng.randint(1, 24), temperature=0, ignore_eos=True) for _ in prompts]
    return prompts, params


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def run(path, enforce_eager: bool, kv_cache_memory: int, attention_backend: str = "torch") -> tuple[list[list[int]], LLM]:
    llm = LLM(str(path), skip_tokenizer_init=True, enforce_eager=enforce_eager, kv_cache_memory=kv_cache_memory,
              max_num_seqs=32, max_num_batched_tokens=256, attention_backend=attention_backend)
    prompts, params = workload()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm


@pytest.fixture(scope="module")
def kv_memory(hf_model) -> int:
    config = LLM(str(hf_model[1]), skip_tokenizer_init=True, kv_cache_memory="1MiB").model_config
    return 24 * int(kv_bytes_per_block(config, 16, torch.float32.itemsize))  # 24 blocks: 32 requests preempt


@pytest.fixture(scope="module")
def eager(hf_model, kv_memory) -> list[list[int]]:
    return run(hf_model[1], enforce_eager=True, kv_cache_memory=kv_memory)[0]


def test_compiled_decode_equals_eager_and_transformers_and_compiles_a_bounded_number_of_graphs(
        hf_model, kv_memory, eager) -> None:
    model, path = hf_model
    graphs_before = counters["stats"]["unique_graphs"]
    compiled, llm = run(path, enforce_eager=False, kv_cache_memory=kv_memory)
    graphs = counters["stats"]["unique_graphs"] - graphs_before

    assert llm.llm_engine.model.compiled_decode is not None
    assert 1 <= graphs <= MAX_GRAPHS, f"{graphs} graphs compiled over {NUM_REQUESTS} requests"
    assert llm.scheduler.num_preemptions > 0
    assert compiled == eager
    prompts, params = workload()
    for i in range(0, NUM_REQUESTS, 25):
        assert compiled[i] == hf_greedy(model, prompts[i], params[i].max_tokens)


def test_flex_backend_equals_eager_and_compiles_a_bounded_number_of_graphs(hf_model, kv_memory, eager) -> None:
    graphs_before = counters["stats"]["unique_graphs"]
    flex, llm = run(hf_model[1], enforce_eager=True, kv_cache_memory=kv_memory, attention_backend="flex")
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    # none when other tests compiled the kernel already: its graphs serve any pool and batch size
    assert graphs <= MAX_GRAPHS, f"{graphs} graphs compiled over {NUM_REQUESTS} requests"
    assert llm.scheduler.num_preemptions > 0
    assert flex == eager


def test_the_default_is_eager(hf_model) -> None:
    llm = LLM(str(hf_model[1]), skip_tokenizer_init=True, kv_cache_memory="1MiB")
    assert llm.llm_engine.model.compiled_decode is None

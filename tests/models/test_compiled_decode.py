"""Compiled steps (torch.compile) against eager steps and transformers: decode steps, the flex attention backend,
and compiled flex decode steps padded to a ladder of batch sizes.

One compiled engine serves a 200-request run of varied prompt and output
lengths in a KV pool small enough to force preemptions: its greedy tokens must
equal the eager engine's for every request and transformers' for a sample, and
the number of graphs compiled must stay bounded (batch 1 and batch > 1), not
grow with the shapes seen. Compilation is the slow part, so it happens once.
The same run on the flex attention backend (a compiled kernel inside eager
steps) holds it to the same bounds; with compiled steps there, every decode
step up to the ladder's top runs padded to a ladder size (one graph per size),
larger ones eagerly, and the padding rows write only the scratch block.
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
from batchserve.models.attention import AttentionMetadata
from batchserve.models.linear import PackedLinear
from batchserve.sim.executor import step_shape

VOCAB = 300
SHAPE = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
NUM_REQUESTS = 200
MAX_GRAPHS = 2  # dynamic shapes: one graph for batch 1 (torch specializes size 1), one for every larger batch
HEAD_GRAPHS = 1  # a one-row step's LM head over its row-major weight (CompilationConfig.row_major_gemv)
ON_CUDA = torch.cuda.is_available()  # the engine's default device: bench/gpu_run.sh runs this file there
cpu_only = pytest.mark.skipif(ON_CUDA, reason="a CPU's compiled step; the engine runs on CUDA here")


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


def engine(path, enforce_eager: bool, kv_cache_memory: int, attention_backend: str = "torch", **kwargs) -> LLM:
    return LLM(str(path), skip_tokenizer_init=True, enforce_eager=enforce_eager, kv_cache_memory=kv_cache_memory,
               max_num_seqs=32, max_num_batched_tokens=256, attention_backend=attention_backend, **kwargs)


def generate(llm: LLM) -> list[list[int]]:
    prompts, params = workload()
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def run(path, enforce_eager: bool, kv_cache_memory: int, attention_backend: str = "torch",
        **kwargs) -> tuple[list[list[int]], LLM]:
    llm = engine(path, enforce_eager, kv_cache_memory, attention_backend, **kwargs)
    return generate(llm), llm


@pytest.fixture(scope="module")
def kv_memory(hf_model) -> int:
    config = LLM(str(hf_model[1]), skip_tokenizer_init=True, kv_cache_memory="1MiB").model_config
    return 24 * int(kv_bytes_per_block(config, 16, torch.float32.itemsize))  # 24 blocks: 32 requests preempt


@pytest.fixture(scope="module")
def eager(hf_model, kv_memory) -> list[list[int]]:
    return run(hf_model[1], enforce_eager=True, kv_cache_memory=kv_memory)[0]


@pytest.mark.parametrize(("compile_regions", "attention_backend"), [(False, "torch"), (True, "torch"), (False, "cpp")],
                         ids=["whole-step", "regional", "cpp-kernel"])
def test_compiled_decode_equals_eager_and_transformers_and_compiles_a_bounded_number_of_graphs(
        hf_model, kv_memory, eager, compile_regions, attention_backend) -> None:
    """Whole-step and regional (one decoder layer's graph for every layer) compilation alike, and whole steps
    whose attention is the cpp backend's kernel (an op of the graph)."""
    if attention_backend == "cpp" and ON_CUDA:
        pytest.skip("the cpp attention backend is a CPU kernel")
    model, path = hf_model
    graphs_before = counters["stats"]["unique_graphs"]
    llm = engine(path, False, kv_memory, attention_backend, compilation_config={"compile_regions": compile_regions})
    recorder, priced = record_steps(llm)
    compiled = generate(llm)
    graphs = counters["stats"]["unique_graphs"] - graphs_before

    assert llm.llm_engine.model.compiled_decode is not None
    assert 1 <= graphs <= MAX_GRAPHS + HEAD_GRAPHS, f"{graphs} graphs compiled over {NUM_REQUESTS} requests"
    assert priced == recorder.compiled_rows, "the cost model's compiled steps are not the ones that ran compiled"
    assert {1, 2} <= {min(rows, 2) for rows in priced} and 0 in priced  # one-row, wider and eager steps
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


@cpu_only
def test_cpp_backend_equals_eager(hf_model, kv_memory, eager) -> None:
    tokens, llm = run(hf_model[1], enforce_eager=True, kv_cache_memory=kv_memory, attention_backend="cpp")
    assert llm.scheduler.num_preemptions > 0
    assert tokens == eager


def test_inductor_settings_reach_the_compiled_step_and_frozen_weights_decode_as_eager(hf_model, kv_memory,
                                                                                    eager) -> None:
    """inductor_compile_config is torch.compile's options: freezing (weights as constants, unpacked linears)
    keeps every token; a setting inductor lacks fails at construction, not at the first decode step."""
    llm = engine(hf_model[1], False, kv_memory, weight_prepack=False,
                 compilation_config={"inductor_compile_config": {"freezing": True}})
    assert generate(llm) == eager
    with pytest.raises(ValueError, match=r"unknown inductor option\(s\) \['max_autotuen'\]"):
        engine(hf_model[1], False, kv_memory, compilation_config={"inductor_compile_config": {"max_autotuen": True}})
    with pytest.raises(ValueError, match="compile_regions applies to the torch attention backend"):
        engine(hf_model[1], False, kv_memory, attention_backend="flex", compilation_config={"compile_regions": True})
    with pytest.raises(ValueError, match="compile_regions must be true or false"):
        engine(hf_model[1], False, kv_memory, compilation_config={"compile_regions": "yes"})
    with pytest.raises(ValueError, match="row_major_gemv must be true or false"):
        engine(hf_model[1], False, kv_memory, compilation_config={"row_major_gemv": 1.5})


@cpu_only
def test_compiled_cpu_steps_keep_row_major_weights_unless_told_otherwise(hf_model, kv_memory) -> None:
    """The plain weights' second copy serves compiled one-row steps only: eager engines and
    row_major_gemv=false hold one copy (the oracle test above runs the default, with copies). The LM head
    of a one-row step is compiled too, and gives the eager head's logits."""
    def copies(llm: LLM) -> set[bool]:
        return {m.weight is not None for m in llm.llm_engine.model.modules() if isinstance(m, PackedLinear)}

    llm = engine(hf_model[1], False, kv_memory)
    assert copies(llm) == {True}
    model = llm.llm_engine.model
    hidden = torch.randn(1, SHAPE["hidden_size"], generator=torch.Generator().manual_seed(0))
    one_row = model.compiled_decode.logits(hidden)
    assert one_row is not None and model.compiled_decode.logits(hidden.repeat(2, 1)) is None
    torch.testing.assert_close(one_row, model.lm_head(hidden).float(), rtol=1e-5, atol=1e-5)
    assert copies(engine(hf_model[1], False, kv_memory, compilation_config={"row_major_gemv": False})) == {False}
    assert copies(engine(hf_model[1], True, kv_memory)) == {False}


@cpu_only
def test_a_cpu_step_calls_its_kernels_from_cpp_unless_told_otherwise(hf_model, kv_memory, monkeypatch) -> None:
    """On a CPU the compiled step's wrapper is inductor's C++ one (CPU_INDUCTOR_DEFAULTS); the config overrides it,
    and without Python's C headers (which building it needs) the default is the Python wrapper."""
    from torch._inductor.utils import run_and_get_code

    import batchserve.models.compiled_decode as compiled_decode

    assert compiled_decode.python_headers_installed(), "Python.h missing: install python3-dev to test the C++ wrapper"
    for settings, headers, cpp in ((None, True, True), ({"cpp_wrapper": False}, True, False), (None, False, False)):
        monkeypatch.setattr(compiled_decode, "python_headers_installed", lambda headers=headers: headers)
        # the engine compiles its decode steps as it starts
        _, codes = run_and_get_code(lambda: engine(hf_model[1], False, kv_memory,
                                                   compilation_config={"inductor_compile_config": settings}))
        assert codes and all(("CppWrapperCodeCache" in code) == cpp for code in codes), settings


@cpu_only
def test_a_cpu_one_row_graph_is_compiled_apart_to_store_what_its_products_reuse(hf_model, kv_memory,
                                                                                monkeypatch) -> None:
    """On a CPU the one-row step (whose products broadcast their input row to every output row) and its LM head
    compile with ONE_ROW_INDUCTOR_DEFAULTS, apart from the graph of more rows, which keeps inductor's defaults;
    inductor_compile_config overrides both. (Its speed is measured in bench/, session 23.)"""
    compiled: list[tuple[str, dict]] = []

    def recording(fn, **kwargs):  # the settings are what this test is about: the steps may run eagerly
        compiled.append((fn.__name__, kwargs["options"]))
        return fn

    monkeypatch.setattr(torch, "compile", recording)
    for settings, one_row, more in ((None, 0, None), ({"realize_opcount_threshold": 7}, 7, 7)):
        compiled.clear()
        engine(hf_model[1], False, kv_memory, compilation_config={"inductor_compile_config": settings})
        thresholds = {name: options.get("realize_opcount_threshold") for name, options in compiled}
        assert thresholds == {"run_layers": more, "one_row_step": one_row, "_logits": one_row}, settings


def test_a_compiled_engine_compiles_its_decode_steps_before_the_first_request(hf_model, kv_memory) -> None:
    """One- and two-row decode steps compile at start-up (vLLM's warm-up), so requests never wait on a compile,
    and the engine's counters start after the dummy requests that compiled them."""
    llm = engine(hf_model[1], False, kv_memory)
    stats = llm.llm_engine.stats()
    assert (stats.computed_prompt_tokens, stats.generation_tokens, stats.prefix_cache_queries) == (0, 0, 0)
    executor = llm.llm_engine.executor  # its step timers too: the compiles are not forward time of the job
    assert (executor.model_s, executor.prepare_s) == (0.0, 0.0)
    graphs_before = counters["stats"]["unique_graphs"]
    for batch in ([[5, 6, 7]], [[5, 6, 7], [8, 9]]):
        llm.generate(batch, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    assert counters["stats"]["unique_graphs"] == graphs_before
    assert llm.llm_engine.stats().generation_tokens == 12


def test_decode_graphs_skip_dynamo_after_their_first_call_unless_this_torch_cannot(hf_model, kv_memory, eager,
                                                                                  monkeypatch) -> None:
    """After its first call (at start-up) each of the torch backend's graphs (one row, more rows, the one-row head)
    runs the code dynamo made for it directly, without guards (DirectCall; the oracle above decodes through them);
    where this torch gives no cache entry to run, the steps go through dynamo and decode the same."""
    from batchserve.models.compiled_decode import DirectCall

    compiled = engine(hf_model[1], False, kv_memory).llm_engine.model.compiled_decode
    assert (compiled.head is None) == ON_CUDA  # the one-row head is compiled on a CPU only (row-major weights)
    graphs = [g for g in (compiled.one_row, compiled.fn, compiled.head) if g is not None]
    assert all(isinstance(g, DirectCall) and g.direct for g in graphs)

    monkeypatch.delattr(torch._dynamo.eval_frame, "_debug_get_cache_entry_list")
    llm = engine(hf_model[1], False, kv_memory)
    compiled = llm.llm_engine.model.compiled_decode
    assert not any(g.direct for g in (compiled.one_row, compiled.fn, compiled.head) if g is not None)
    assert generate(llm) == eager


def test_the_default_is_eager(hf_model) -> None:
    llm = LLM(str(hf_model[1]), skip_tokenizer_init=True, kv_cache_memory="1MiB")
    assert llm.llm_engine.model.compiled_decode is None


LADDER = {"cudagraph_capture_sizes": [1, 4]}  # 2-3 rows pad to 4, larger decode steps run eagerly (2 graphs)


class StepRecorder:
    """Wraps a model's CompiledDecode: the row count of every pure decode step, and whether it ran compiled;
    of every step, the rows that ran compiled (0 for an eager step)."""

    def __init__(self, compiled) -> None:
        self.compiled, self.steps, self.compiled_rows = compiled, [], []
        self.logits = compiled.logits
        self.padded_sizes: list[int] = []
        fn = compiled.fn

        def record(input_ids, *args):
            self.padded_sizes.append(input_ids.shape[0])
            return fn(input_ids, *args)
        compiled.fn = record

    def __call__(self, input_ids, positions, kv_caches, meta):
        hidden = self.compiled(input_ids, positions, kv_caches, meta)
        if meta.num_seqs == input_ids.shape[0]:
            self.steps.append((input_ids.shape[0], hidden is not None))
        self.compiled_rows.append(0 if hidden is None else input_ids.shape[0])
        return hidden


def record_steps(llm: LLM) -> tuple[StepRecorder, list[int]]:
    """A recorder of the steps the engine runs compiled, and the list that collects, step by step, the rows
    the cost model prices as compiled (StepShape.num_compiled_rows of the step's batch)."""
    core = llm.llm_engine
    recorder = core.model.compiled_decode = StepRecorder(core.model.compiled_decode)
    priced: list[int] = []
    core.step_observer = lambda step: priced.append(step_shape(step.batch, core.executor.attention).num_compiled_rows)
    return recorder, priced


def test_flex_compiled_decode_pads_to_the_ladder_and_equals_eager(hf_model, kv_memory, eager) -> None:
    llm = engine(hf_model[1], enforce_eager=False, kv_cache_memory=kv_memory, attention_backend="flex",
                 compilation_config=LADDER)
    recorder, priced = record_steps(llm)
    graphs_before = counters["stats"]["unique_graphs"]
    tokens = generate(llm)
    graphs = counters["stats"]["unique_graphs"] - graphs_before

    assert tokens == eager
    assert priced == recorder.compiled_rows, "the cost model's compiled steps are not the ones that ran compiled"
    assert llm.scheduler.num_preemptions > 0
    ladder = set(LADDER["cudagraph_capture_sizes"])
    assert set(recorder.padded_sizes) <= ladder
    compiled = {rows for rows, ran in recorder.steps if ran}
    assert compiled - ladder, "no decode step was padded"
    assert all(rows <= 4 for rows in compiled)
    assert any(not ran and rows > 4 for rows, ran in recorder.steps), "no step ran above the ladder"
    # one graph per ladder size, and the flex kernel's (one row, more) for the eager steps and for the compiled
    # steps' opaque op (its tensors come without inference mode's dispatch key: a graph of their own)
    bound = len(ladder) + 2 * MAX_GRAPHS + HEAD_GRAPHS
    assert graphs <= bound, f"{graphs} graphs compiled over {NUM_REQUESTS} requests"


def test_padding_rows_write_only_the_scratch_block_and_logits_match_eager(hf_model, kv_memory) -> None:
    # the pool of the ladder test above: the graphs it compiled serve this engine
    llm = engine(hf_model[1], False, kv_memory, attention_backend="flex", compilation_config=LADDER)
    model, executor = llm.llm_engine.model, llm.executor
    num_blocks = llm.scheduler.kv.num_blocks
    scratch = model.compiled_decode.scratch_block
    assert scratch == num_blocks == executor.kv_caches[0][0].shape[0] - 1  # past every block the scheduler owns
    torch.manual_seed(1)
    for k, v in executor.kv_caches:
        k.normal_()
        v.normal_()
    # 3 decode rows (padded to 4) on contexts of 5, 17 and 40 tokens in blocks the scheduler could hand out
    tables, contexts = [[0], [1, 2], [3, 4, 5]], [5, 17, 40]
    positions, meta = AttentionMetadata.of_rows(tables, contexts, [1, 1, 1], 16, executor.device, executor.attention)
    ids = torch.tensor([7, 8, 9], device=executor.device)
    before = [(k.clone(), v.clone()) for k, v in executor.kv_caches]
    with torch.inference_mode():
        expected = model.run_layers(ids, positions, [(k.clone(), v.clone()) for k, v in before], meta)  # eager
    hidden = model(ids, positions, executor.kv_caches, meta)

    torch.testing.assert_close(model.compute_logits(hidden), model.compute_logits(expected), rtol=1e-4, atol=1e-4)
    written = set(meta.slot_mapping.tolist())
    for (k, v), (k0, v0) in zip(executor.kv_caches, before):
        for cache, old in ((k, k0), (v, v0)):
            changed = (cache != old).flatten(2).any(-1).nonzero().tolist()  # (block, offset) pairs
            assert {b * 16 + o for b, o in changed if b != scratch} == written
            assert [scratch, 0] in changed  # where the padding row wrote

"""One RunSetup feeds the engine and its twin: same KV blocks, dtype and scheduler."""

from __future__ import annotations

import json

import pytest

from batchserve.engine.llm_engine import LLMEngine
from batchserve.jobs.setup import RunSetup
from batchserve.sim.hardware import get_hardware


@pytest.mark.parametrize("kv, dtype, scheduler", [("300KiB", "auto", "sarathi"), ("1MiB", "bfloat16", "vllm")])
def test_the_twin_has_the_engines_cache_scheduler_and_dtype(kv, dtype, scheduler):
    setup = RunSetup(device="cpu", kv_cache_memory=kv, dtype=dtype, scheduler=scheduler, max_num_batched_tokens=512,
                     max_num_seqs=8)
    engine = LLMEngine(setup.model, **setup.engine_args())
    sim = setup.sim_setup("cpu-local")
    assert sim.cache.num_blocks == engine.scheduler.kv.num_blocks
    assert sim.cache.block_size == engine.scheduler.kv.block_size
    assert sim.scheduler == engine.scheduler.config
    assert sim.deployment.weight_dtype == {"auto": "fp32", "bfloat16": "bf16"}[dtype]


def test_cpu_without_a_kv_size_gets_the_engines_cpu_default():
    setup = RunSetup(device="cpu")
    assert setup.sim_setup("cpu-local").cache.num_blocks == LLMEngine("tiny", **setup.engine_args()).scheduler.kv.num_blocks


def test_a_dtype_the_engine_does_not_run_is_refused():
    with pytest.raises(ValueError, match="dtype 'int8' is not one the engine runs"):
        RunSetup(dtype="int8").sim_setup("cpu-local")


def test_the_attention_backend_reaches_the_engine_and_its_twin(monkeypatch, tmp_path):
    # no step runs here, so the compiled engine need not compile its graphs at start-up (tests/models covers that)
    monkeypatch.setattr(LLMEngine, "_compile_decode_steps", lambda self: None)
    flex_fit = tmp_path / "flex.json"  # a profile calibrated on the flex backend prices its reads
    flex_fit.write_text(json.dumps({**get_hardware("cpu-local").to_dict(), "name": "flex-fit",
                                    "attention_backend": "flex", "attention_efficiency": None}))
    setup = RunSetup(device="cpu", attention_backend="flex")
    assert setup.sim_setup(str(flex_fit)).attention.decode_padding_ratio == 1.0  # the twin costs unpadded keys
    assert LLMEngine("tiny", **setup.engine_args()).executor.attention.backend == "flex"
    compiled = RunSetup(device="cpu", attention_backend="flex", enforce_eager=False,
                        compilation_config='{"cudagraph_capture_sizes": [4, 1, 2]}')
    engine = LLMEngine("tiny", **compiled.engine_args())
    assert engine.model.compiled_decode.capture_sizes == (1, 2, 4)
    # the twin marks the steps the engine runs compiled (up to the ladder's top) by the engine's own rule
    assert compiled.sim_setup(str(flex_fit)).attention == engine.executor.attention
    assert engine.executor.attention.compiled_decode_rows == 4


def test_the_twin_of_a_compiled_engine_knows_which_steps_run_compiled():
    assert RunSetup().sim_setup("cpu-local").attention.compiled_decode_rows == 0  # eager by default
    torch_backend = RunSetup(enforce_eager=False, max_num_seqs=24).sim_setup("cpu-local")
    assert torch_backend.attention.compiled_decode_rows == 24  # any pure decode step in one group
    lora = RunSetup(enforce_eager=False, lora=(("enable_lora", True),)).sim_setup("cpu-local")
    assert lora.attention.compiled_decode_rows == 0  # adapter deltas run eagerly


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_the_twin_of_a_quantized_engine_streams_packed_weights(method):
    """--estimate --quantization: the engine's weight-only method, in its activation dtype and KV blocks."""
    setup = RunSetup(device="cpu", kv_cache_memory="1MiB", dtype="bfloat16", quantization=method)
    engine = LLMEngine(setup.model, **setup.engine_args())
    sim = setup.sim_setup("cpu-local")
    assert sim.deployment.quantization == engine.quantization_config.method == method
    assert sim.deployment.weight_dtype == "bf16" and sim.cache.num_blocks == engine.scheduler.kv.num_blocks
    unquantized = RunSetup(device="cpu", kv_cache_memory="1MiB", dtype="bfloat16").sim_setup("cpu-local")
    assert sim.deployment.weight_bytes_per_gpu() < unquantized.deployment.weight_bytes_per_gpu()


def test_gguf_quantization_is_named_as_not_modelled():
    with pytest.raises(ValueError, match="quantization 'gguf' is not modelled; use one of int8, int4"):
        RunSetup(quantization="gguf").sim_setup("cpu-local")

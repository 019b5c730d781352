"""The simulator is the engine's LoRA twin: same steps, same adapter segments, same slot loads (tiny, CPU)."""

from __future__ import annotations

import pytest

from batchserve.calibration.validate import sim_setup
from batchserve.engine.llm_engine import LLMEngine
from batchserve.lora.random_adapters import write_random_adapters
from batchserve.sim.executor import step_adapters, step_shape
from batchserve.sim.simulate import build_cluster
from batchserve.workload import WorkloadSpec, synthetic_requests


@pytest.mark.parametrize("max_loras", [1, 2])
def test_sim_and_engine_run_the_same_adapter_steps_and_loads(tmp_path, max_loras: int) -> None:
    llm = LLMEngine("tiny", kv_cache_memory="1MiB", enable_lora=True, max_loras=max_loras, max_lora_rank=8,
                    max_cpu_loras=4, skip_tokenizer_init=True, max_num_seqs=8, max_num_batched_tokens=64)
    manager = llm.lora_manager
    for adapter in write_random_adapters(manager.shapes, len(manager.layers), tmp_path, 4, rank=8):
        manager.add(adapter)
    spec = WorkloadSpec(num_requests=24, input_len="uniform:4:80", output_len="uniform:1:12", num_adapters=4,
                        adapter_zipf_exponent=0.5, vocab_size=llm.model_config.vocab_size, seed=3)
    real: list[int] = []
    engine = llm.engine
    for req in synthetic_requests(spec):
        engine.add_request(req)
    while engine.has_unfinished():
        out = engine.step()
        real.append(step_shape(out.batch).num_lora_segments)
    assert max(real) == max_loras

    cluster = build_cluster(sim_setup(llm, "cpu-local", "tiny"))
    executor = cluster.replicas[0].executor
    simulated: list[int] = []
    execute = executor.execute

    def recording(batch):
        simulated.extend([len(step_adapters(batch))] * batch.num_steps)
        return execute(batch)

    executor.execute = recording
    result = cluster.run(synthetic_requests(spec))
    assert len(result.records) == 24
    assert simulated == real
    assert executor.num_lora_loads == manager.num_slot_loads >= 4  # each adapter at least once

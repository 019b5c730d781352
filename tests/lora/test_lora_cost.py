"""The simulator's LoRA term against what the engine's LoRALinear layers hold and compute: slot elements,
delta FLOPs counted by torch's FLOP counter, bytes a segment reads and a slot load copies."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode

from batchserve.engine.llm_engine import LLMEngine
from batchserve.sim.cost_model import CostModel
from batchserve.sim.deployment import Deployment
from batchserve.sim.hardware import get_hardware

RANK, SLOTS = 8, 3


def _addmm_flops(self_shape, a_shape, b_shape, *_, out_shape=None, **kwargs) -> int:
    """The in-place expand (`addmm_`), which torch's counter does not count by itself."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return LLMEngine("tiny", kv_cache_memory="4MiB", enable_lora=True, max_loras=SLOTS, max_lora_rank=RANK)


@pytest.fixture(scope="module")
def cost(engine: LLMEngine) -> CostModel:
    return CostModel(Deployment(engine.model_config, get_hardware("cpu-local"), weight_dtype="fp32",
                                max_lora_rank=RANK))


def test_a_layer_s_slot_holds_the_elements_the_cost_model_charges(engine: LLMEngine, cost: CostModel) -> None:
    layers = engine.lora_manager.layers
    assert cost.num_layers == len(layers)
    for wrapped in layers:
        slot_elements = sum(lin.lora_a[0].numel() + lin.lora_b[0].numel() for lin in wrapped)
        assert cost.lora_layer_elements == slot_elements
        # what one segment reads per layer and one load copies per layer, in the engine's dtype
        slot_bytes = sum(lin.lora_a[0].nbytes + lin.lora_b[0].nbytes for lin in wrapped)
        assert cost.lora_layer_elements * cost.ab == slot_bytes
    one_load = cost.lora_time(1, 1, 1) - cost.lora_time(1, 1, 0)
    assert one_load * cost.host_bandwidth == pytest.approx(len(layers) * slot_bytes)


@pytest.mark.parametrize("segments", [[(0, slice(0, 1))], [(0, slice(0, 5)), (2, slice(5, 7)), (1, slice(7, 40))]])
def test_the_deltas_run_the_flops_the_cost_model_charges(engine: LLMEngine, cost: CostModel, segments) -> None:
    rows = segments[-1][1].stop
    counted = 0
    try:
        for lin in engine.lora_manager.layers[0]:
            inputs = torch.randn(rows + 3, lin.base.in_features)  # 3 base rows after the segments pay nothing
            lin.step.segments = segments
            with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops}) as with_lora:
                lin(inputs)
            lin.step.segments = []
            with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops}) as base:
                lin(inputs)
            counted += with_lora.get_total_flops() - base.get_total_flops()
    finally:
        engine.lora_manager.step.segments = []
    assert counted == 2 * cost.lora_layer_elements * rows

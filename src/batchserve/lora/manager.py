"""LoRAManager: which adapters exist, which are loaded in host memory, which sit in device slots.

Three tiers, as in vLLM and S-LoRA: a registry of every adapter a request
named (id -> path), an LRU of `max_cpu_loras` loaded adapters in host memory
(others are re-read from disk on demand), and `max_loras` device slots that
the wrapped projections read. Before each step the executor calls `prepare`:
the batch's adapters are made resident (evicting the least recently used
slots the batch does not need) and its rows are grouped into segments by
slot. The scheduler's `LoRAAdmission` guarantees a batch never needs more
than `max_loras` slots.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..model_config import ModelConfig
from ..models.llama import CausalLM
from ..request import Request
from .adapter import LoRAAdapter, LoRAError, load_adapter
from .config import LoRAConfig
from .layers import LoRAStep, wrap_model
from .request import LoRARequest
from .slots import SlotTable


class LoRAManager:
    """Wraps the model's projections at construction; owns the adapter registry, host LRU and device slots."""

    def __init__(self, model: CausalLM, model_config: ModelConfig, config: LoRAConfig) -> None:
        if model_config.is_moe:  # adapters would need per-expert slots; the dense projections alone are a trap
            raise LoRAError(f"LoRA adapters on MoE models ({model_config.architecture}) are not supported yet; "
                            f"serve {model_config.name} without enable_lora")
        self.config = config
        self.device = model.device
        self.dtype = model.dtype
        self.step = LoRAStep()
        self.layers = wrap_model(model, model_config, config.max_loras, config.max_lora_rank, self.step)
        self.shapes = {name: (lin.base.in_features, n_out) for lin in self.layers[0] for name, n_out in lin.parts}
        self.registry: dict[int, LoRARequest] = {}
        self._cpu: OrderedDict[int, LoRAAdapter] = OrderedDict()  # host LRU, oldest first
        self.slots = SlotTable(config.max_loras)
        self.num_disk_loads = 0
        self.num_slot_loads = 0

    @property
    def resident(self) -> list[int]:
        """Adapter ids now in device slots."""
        return self.slots.resident

    @property
    def cached(self) -> list[int]:
        """Adapter ids now loaded in host memory."""
        return list(self._cpu)

    def add(self, request: LoRARequest) -> None:
        """Register an adapter, loading and checking it the first time; raises LoRAError (a ValueError)."""
        known = self.registry.get(request.lora_int_id)
        if known is not None:
            if known.lora_path != request.lora_path:
                raise LoRAError(f"lora_int_id {request.lora_int_id} already names {known.lora_path!r} "
                                f"({known.lora_name!r}); give {request.lora_path!r} another id")
            return
        self._cache(self._load(request))
        self.registry[request.lora_int_id] = request

    @staticmethod
    def row_order(requests: Sequence[Request]) -> list[int]:
        """Batch indices grouped by adapter (base rows first, stable): each adapter's rows become one slice,
        so a segment is a contiguous view and its delta an in-place GEMM, with no gather or scatter."""
        return sorted(range(len(requests)), key=lambda i: (requests[i].adapter_id is not None,
                                                           requests[i].adapter_id or 0))

    def prepare(self, requests: Sequence[Request], query_start: Sequence[int]) -> None:
        """Make the batch's adapters resident and give each its slice of the flat batch for the forward pass.

        `requests` are in flat-batch order, grouped by adapter (`row_order`).
        """
        spans: dict[int, slice] = {}
        for i, req in enumerate(requests):
            aid = req.adapter_id
            if aid is None:
                continue
            if aid in spans and spans[aid].stop != query_start[i]:
                raise RuntimeError(f"adapter {aid}'s rows are not contiguous; order the batch with row_order")
            spans[aid] = slice(spans[aid].start if aid in spans else query_start[i], query_start[i + 1])
        if len(spans) > self.config.max_loras:
            raise RuntimeError(f"a step needs {len(spans)} adapters but max_loras={self.config.max_loras}; "
                               "the scheduler's LoRAAdmission should have prevented this")
        self.step.segments = [(self._activate(aid, set(spans)), rows) for aid, rows in spans.items()]

    def _activate(self, adapter_id: int, needed: set[int]) -> int:
        """The adapter's slot, loading it into a free or least recently used unneeded slot if absent."""
        slot, load = self.slots.activate(adapter_id, needed)
        if not load:
            return slot
        adapter = self._adapter(adapter_id)
        by_module: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for (layer, name), ab in adapter.weights.items():
            by_module.setdefault(layer, {})[name] = ab
        for layer, wrapped in enumerate(self.layers):
            for lin in wrapped:
                lin.set_slot(slot, by_module.get(layer, {}))
        self.num_slot_loads += 1
        return slot

    def _adapter(self, adapter_id: int) -> LoRAAdapter:
        adapter = self._cpu.get(adapter_id)
        if adapter is None:
            adapter = self._load(self.registry[adapter_id])
            self._cache(adapter)
        self._cpu.move_to_end(adapter_id)
        return adapter

    def _load(self, request: LoRARequest) -> LoRAAdapter:
        self.num_disk_loads += 1
        return load_adapter(request, self.shapes, len(self.layers), self.config.max_lora_rank, self.dtype)

    def _cache(self, adapter: LoRAAdapter) -> None:
        self._cpu[adapter.request.lora_int_id] = adapter
        while len(self._cpu) > self.config.cpu_capacity:
            self._cpu.popitem(last=False)

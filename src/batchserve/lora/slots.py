"""Which adapters sit in the device's `max_loras` slots: an LRU that never evicts an adapter the step needs.

Torch-free, so the engine's LoRAManager (which copies the weights) and the
simulator's executor (which charges the copy's time) make the same choices.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable


class SlotTable:
    """Adapter id -> device slot, least recently used first."""

    def __init__(self, max_loras: int) -> None:
        self.max_loras = max_loras
        self._slots: OrderedDict[Hashable, int] = OrderedDict()

    @property
    def resident(self) -> list[Hashable]:
        """Adapter ids now in slots, least recently used first."""
        return list(self._slots)

    def activate(self, adapter_id: Hashable, needed: Collection[Hashable]) -> tuple[int, bool]:
        """The adapter's slot and whether it must be loaded there: a free slot, else that of the least
        recently used adapter not in `needed` (this step's adapters)."""
        slot = self._slots.get(adapter_id)
        if slot is not None:
            self._slots.move_to_end(adapter_id)
            return slot, False
        if len(self._slots) < self.max_loras:
            slot = len(self._slots)
        else:
            victim = next((aid for aid in self._slots if aid not in needed), None)
            if victim is None:
                raise RuntimeError(f"a step needs more than max_loras={self.max_loras} adapters; "
                                   "the scheduler's LoRAAdmission should have prevented this")
            slot = self._slots.pop(victim)
        self._slots[adapter_id] = slot
        return slot, True

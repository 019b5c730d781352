"""The scheduler's LoRA constraint: admit a request only if its adapter can be resident this step.

Torch-free, so the core scheduler stays torch-free: it sees a callable that
says yes or no. A slot can hold the adapter when the adapters of the running
requests plus this one number at most `max_loras`; a resident adapter no
running request uses can always be evicted to make room.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..request import Request


class LoRAAdmission:
    """`admits(req, running)`: True when req's adapter fits beside the running requests' adapters."""

    def __init__(self, max_loras: int) -> None:
        self.max_loras = max_loras

    def __call__(self, req: Request, running: Iterable[Request]) -> bool:
        if req.adapter_id is None:
            return True  # base rows need no slot
        active = {r.adapter_id for r in running if r.adapter_id is not None}
        return req.adapter_id in active or len(active) < self.max_loras

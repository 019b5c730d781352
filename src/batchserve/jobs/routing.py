"""Which replica runs a request of a sharded job: the simulator's prefix affinity, with the job's own loads.

A request's prefix keys are its anchor (the earlier request whose prompt holds
its shared prefix, set by ordering) then its own id, so a request follows its
anchor and later requests can follow it. The replicas are remote or simulated,
so the router counts each one's outstanding tokens itself.
"""

from __future__ import annotations

from ..sim.router import PrefixAffinity, RouterConfig
from .batch_io import BatchRequest


class JobRouter:
    """Prefix affinity over anchors, balanced by the outstanding tokens routed to each replica."""

    def __init__(self, num_replicas: int, window: int, config: RouterConfig = RouterConfig()) -> None:
        # anchors point within one ordering window, so a replica need remember no more than a window of ids
        self.affinity = PrefixAffinity([window] * num_replicas, config)
        self.loads = [0] * num_replicas

    @staticmethod
    def cost(req: BatchRequest) -> int:
        """Outstanding tokens of a request: its prompt plus its output budget."""
        assert req.params is not None
        return len(req.prompt_token_ids) + req.params.max_tokens * req.params.n

    def route(self, req: BatchRequest) -> int:
        keys = [req.custom_id] if req.anchor is None else [req.anchor, req.custom_id]
        idx = self.affinity.route(keys, self.loads)
        self.loads[idx] += self.cost(req)
        return idx

    def finished(self, idx: int, req: BatchRequest) -> None:
        self.loads[idx] -= self.cost(req)

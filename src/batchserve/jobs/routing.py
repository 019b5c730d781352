"""Which replica runs a request of a sharded job: prefix affinity, balanced by outstanding tokens."""

from __future__ import annotations

from collections import OrderedDict

from .batch_io import BatchRequest

_REMEMBERED = 100_000  # anchors looked up are recent (same ordering window); older owners are forgotten


class PrefixAffinity:
    """A request goes where its anchor went (its shared prefix is cached there), else to the least loaded
    replica; affinity yields when that replica carries `balance_ratio` times the least load, so one huge
    prefix group cannot pin a whole job to one replica (as SGLang's cache-aware router does)."""

    def __init__(self, num_replicas: int, balance_ratio: float = 1.5) -> None:
        self.loads = [0] * num_replicas
        self.balance_ratio = balance_ratio
        self._owner: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def cost(req: BatchRequest) -> int:
        """Outstanding tokens of a request: its prompt plus its output budget."""
        assert req.params is not None
        return len(req.prompt_token_ids) + req.params.max_tokens * req.params.n

    def route(self, req: BatchRequest) -> int:
        least = self.loads.index(min(self.loads))
        idx = self._owner.get(req.anchor, least) if req.anchor is not None else least
        if self.loads[idx] > self.balance_ratio * self.loads[least] + 4096:
            idx = least
        self.loads[idx] += self.cost(req)
        self._owner[req.custom_id] = idx
        if len(self._owner) > _REMEMBERED:
            self._owner.popitem(last=False)
        return idx

    def finished(self, idx: int, req: BatchRequest) -> None:
        self.loads[idx] -= self.cost(req)

    def owner(self, custom_id: str) -> int | None:
        return self._owner.get(custom_id)

"""SimExecutor: predicts step durations with the cost model; tokens are synthetic."""

from __future__ import annotations

import numpy as np

from ..core.batch import ScheduledBatch, StepResult
from ..sim.cost_model import CostModel, StepShape


def step_shape(batch: ScheduledBatch) -> StepShape:
    """What the cost model needs of a one-step batch: prompt chunks, decodes, contexts, sampled rows."""
    num_decodes = batch.num_lazy_decodes
    decode_context = batch.lazy_decode_context
    prefill_tokens = prefill_context = num_sampling = num_chunks = 0
    attended = 0.0
    for req, n, c in zip(batch.requests, batch.num_tokens, batch.num_computed):
        if n == 1:
            num_decodes += 1
            decode_context += c + 1
        else:
            prefill_tokens += n
            num_chunks += 1
            prefill_context += c + n
            attended += n * (c + (n + 1) / 2)
            if c + n == req.num_tokens:
                num_sampling += 1
    return StepShape(prefill_tokens, attended, prefill_context, num_decodes, decode_context, num_sampling + num_decodes,
                     num_chunks)


class SimExecutor:
    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model

    def execute(self, batch: ScheduledBatch) -> StepResult:
        if batch.num_steps > 1:
            return StepResult(self._decode_run(batch, batch.num_steps).tolist())
        return StepResult([self.step_time(batch)])

    def step_time(self, batch: ScheduledBatch) -> float:
        return self.cost_model.step_time(*step_shape(batch))

    def _decode_run(self, batch: ScheduledBatch, num_steps: int) -> np.ndarray:
        """End offsets of a run of lazy-decode steps (the only kind the scheduler extends)."""
        return self.cost_model.decode_run_offsets(batch.num_lazy_decodes, batch.lazy_decode_context, num_steps)

    def max_decode_steps(self, batch: ScheduledBatch, horizon_s: float, limit: int) -> int:
        if horizon_s == float("inf"):
            return limit
        if horizon_s <= 0 or limit <= 1:
            return 1
        offsets = self._decode_run(batch, limit)
        # step j starts at offsets[j-1]; count the steps starting strictly before the horizon
        return min(limit, int(np.searchsorted(offsets, horizon_s, side="left")) + 1)

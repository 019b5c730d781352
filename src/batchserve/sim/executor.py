"""SimExecutor: predicts step durations with the cost model; tokens are synthetic."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Protocol

import numpy as np

from ..attention_layout import AttentionConfig, decode_layout
from ..core.batch import ScheduledBatch, StepResult
from ..executors.base import Executor
from ..gemm_shapes import SeenTokenCounts
from ..lora.slots import SlotTable
from .batch import DecodeRunResult, SimBatch
from .cost_model import CostModel, StepShape
from .decode_cohort import DecodeCohort
from .speculation import SimSpeculation


def step_shape(batch: ScheduledBatch, attention: AttentionConfig = AttentionConfig(), num_lazy_decodes: int = 0,
               lazy_decode_context: int = 0, lazy_adapters: Mapping[Hashable, int] | None = None,
               num_lora_loads: int = 0, cohort: DecodeCohort | None = None,
               seen: SeenTokenCounts | None = None, num_proposals: int = 0, num_wakeups: int = 0) -> StepShape:
    """What the cost model needs of a one-step batch: prompt chunks, decodes, contexts, sampled rows, adapters.

    `num_lazy_decodes` decodes attending to `lazy_decode_context` tokens in all
    join the batch's listed requests (a SimBatch counts its `cohort`'s decodes,
    `lazy_adapters` of them per LoRA adapter); all decodes' keys are padded as
    `attention` groups them (without the cohort, lazy rows count unpadded).
    Constrained and speculating rows are always listed (the scheduler keeps them
    out of the cohort); a verification of k drafts is a k + 1 token chunk,
    sampled once, with k more logits rows (`num_draft_logits`).
    `num_lora_loads`: adapters copied into a slot for this step (the slot table
    knows, not the batch). `seen`: the token counts run before, to mark (and
    record) a step whose count is new. `num_proposals`: requests whose drafts
    were looked up this step (the speculator knows: some found none). `num_wakeups`: 1 if the step starts
    on an engine that had been idle (the serving loop knows, not the batch).
    """
    prefill_tokens = prefill_context = num_sampling = num_chunks = num_constrained = draft_logits = 0
    attended = 0.0
    decode_keys: list[int] = []
    lora_tokens = sum(lazy_adapters.values()) if lazy_adapters else 0
    adapters = set(lazy_adapters or ())
    drafts = batch.spec_token_ids
    for i, (req, n, c) in enumerate(zip(batch.requests, batch.num_tokens, batch.num_computed)):
        samples = batch.samples(i)  # from the batch: after the step, the request holds one more token
        verifies = bool(drafts) and req in drafts
        if n == 1:
            decode_keys.append(c + 1)
        else:
            prefill_tokens += n
            num_chunks += 1
            prefill_context += c + n
            attended += n * (c + (n + 1) / 2)
            # a verification (speculative decoding) runs as a prompt chunk (its drafts past the request's known
            # tokens) and takes logits at all its rows
            num_sampling += samples or verifies
            draft_logits += n - 1 if verifies else 0
        num_constrained += samples and req.sampling_params.structured_outputs is not None
        if req.adapter_id is not None:
            lora_tokens += n
            adapters.add(req.adapter_id)
    num_decodes = num_lazy_decodes + len(decode_keys)
    ratio = attention.decode_padding_ratio
    if cohort is not None and num_lazy_decodes:
        keys, groups = cohort.layout(ratio, extra=decode_keys)
        padded, num_groups = int(keys[0]), int(groups[0])
    else:  # lazy rows without their cohort count as one unpadded group
        padded, num_groups = decode_layout(decode_keys, ratio)
        padded += lazy_decode_context
        num_groups += num_lazy_decodes > 0
    num_groups = attention.decode_calls(num_groups)
    new = seen.first_run(prefill_tokens + num_decodes) if seen is not None else 0
    return StepShape(prefill_tokens, attended, prefill_context, num_decodes, lazy_decode_context + sum(decode_keys),
                     num_sampling + num_decodes, num_chunks, padded, num_constrained, lora_tokens, len(adapters),
                     num_lora_loads, new, num_groups, num_proposals, draft_logits, num_wakeups,
                     batch.shared_decode_keys, attention.compiled_rows(prefill_tokens, num_decodes, num_groups))


def step_adapters(batch: SimBatch) -> set[Hashable]:
    """The LoRA adapters a step runs: its listed rows' and its lazy decodes'."""
    return {r.adapter_id for r in batch.requests if r.adapter_id is not None} | set(batch.lazy_adapters)


class DecodeRunExecutor(Executor, Protocol):
    """An executor that can run a SimBatch's `num_steps` decode steps at once."""

    def wake(self) -> None:
        """The replica had been idle: its next step pays the wake-up (`Efficiency.wakeup_overhead_s`)."""

    def max_decode_steps(self, batch: SimBatch, horizon_s: float, limit: int) -> int:
        """How many (at most `limit`) decode steps of this batch may run back to back, all starting within `horizon_s`."""


class SimExecutor:
    def __init__(self, cost_model: CostModel, attention: AttentionConfig = AttentionConfig(),
                 max_loras: int = 0, speculation: SimSpeculation | None = None,
                 warm_token_counts: Iterable[int] = ()) -> None:
        self.cost_model = cost_model
        self.speculation = speculation  # speculative decoding: drafting cost and acceptance draws; None: off
        self.attention = attention  # the engine's decode grouping, whose padding the step reads
        # which adapters the device slots hold, chosen as the engine's LoRAManager chooses; 0: no LoRA
        self.slots = SlotTable(max_loras) if max_loras else None
        self.num_lora_loads = 0
        self.seen = SeenTokenCounts(warm_token_counts)  # the counts this replica ran, as the engine's kernels know them
        self.woken = False  # the next step is the first after the replica idled

    def wake(self) -> None:
        self.woken = True

    def execute(self, batch: SimBatch) -> StepResult:
        loads = self._load_adapters(batch)
        wakeups, self.woken = int(self.woken), False
        if batch.num_steps > 1:
            cost = self.cost_model
            first = (cost.lora_load_time(loads) + cost.new_shape_overhead * self.seen.first_run(batch.num_lazy_decodes)
                     + cost.wakeup_overhead * wakeups)
            offsets = self._decode_run(batch, batch.num_steps) + cost.time_scale * first
            return DecodeRunResult.from_offsets(offsets.tolist())
        spec = self.speculation
        proposals = spec.proposer.take_proposals() if spec is not None else []
        duration = self.cost_model.step_time(*step_shape(
            batch, self.attention, batch.num_lazy_decodes, batch.lazy_decode_context, batch.lazy_adapters, loads,
            batch.cohort, self.seen, len(proposals), wakeups))
        if spec is None:
            return StepResult(duration)
        return StepResult(duration + spec.draft_model_time(proposals), spec.sampled_tokens(batch))

    def _load_adapters(self, batch: SimBatch) -> int:
        """Make the step's adapters resident; returns how many had to be copied into a slot."""
        if self.slots is None:
            return 0
        needed = step_adapters(batch)
        loads = sum(self.slots.activate(aid, needed)[1] for aid in needed)
        self.num_lora_loads += loads
        return loads

    def _decode_run(self, batch: SimBatch, num_steps: int) -> np.ndarray:
        """End offsets of a run of lazy-decode steps (the only kind the scheduler extends)."""
        adapters = batch.lazy_adapters
        keys, groups = batch.cohort.layout(self.attention.decode_padding_ratio, num_steps)
        groups = self.attention.decode_calls(groups)
        n = batch.num_lazy_decodes
        return self.cost_model.decode_run_offsets(n, keys, sum(adapters.values()), len(adapters), groups,
                                                  batch.shared_decode_keys, self.attention.compiled_rows(0, n, groups))

    def max_decode_steps(self, batch: SimBatch, horizon_s: float, limit: int) -> int:
        if horizon_s == float("inf"):
            return limit
        if horizon_s <= 0 or limit <= 1:
            return 1
        offsets = self._decode_run(batch, limit)
        # step j starts at offsets[j-1]; count the steps starting strictly before the horizon
        return min(limit, int(np.searchsorted(offsets, horizon_s, side="left")) + 1)

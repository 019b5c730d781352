"""Engine-wide counters and gauges for progress lines and the server's `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.batch import ScheduledBatch, StepResult
from ..core.scheduler import Scheduler
from .parallel_sampling import SiblingGate


@dataclass(frozen=True)
class EngineStats:
    """Counters and gauges for progress lines and `/metrics`."""

    num_running: int
    num_waiting: int
    """Requests not yet admitted, held siblings of an `n` > 1 prompt included."""
    kv_cache_usage: float
    prefix_cache_queries: int
    """Prompt tokens looked up in the prefix cache."""
    prefix_cache_hits: int
    """Of which served from it."""
    computed_prompt_tokens: int
    """Prompt tokens actually run through the model (recomputation after preemption included)."""
    generation_tokens: int
    num_preemptions: int
    spec_decode_num_proposals: int = 0
    """Speculative decoding: requests the proposer was asked for drafts (an n-gram lookup may find none)."""
    spec_decode_num_drafts: int = 0
    """Speculative decoding: verification steps that carried a draft (vLLM's counter names)."""
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0


class StatsCollector:
    """Sums what every step computed; the gauges are read from the scheduler when asked."""

    def __init__(self, scheduler: Scheduler, siblings: SiblingGate) -> None:
        self.scheduler = scheduler
        self.siblings = siblings
        self.computed_prompt_tokens = 0
        self.generation_tokens = 0
        self.num_preemptions = 0

    def record(self, batch: ScheduledBatch, result: StepResult) -> None:
        self.computed_prompt_tokens += batch.num_computed_prompt_tokens
        self.num_preemptions += len(batch.preempted)
        self.generation_tokens += sum(len(toks) for toks in result.sampled_token_ids)

    def snapshot(self) -> EngineStats:
        scheduler = self.scheduler
        kv = scheduler.kv
        spec = scheduler.speculator
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting) + self.siblings.num_held,
            kv_cache_usage=kv.pool.usage,
            prefix_cache_queries=kv.num_queries,
            prefix_cache_hits=kv.num_hits,
            computed_prompt_tokens=self.computed_prompt_tokens,
            generation_tokens=self.generation_tokens,
            num_preemptions=self.num_preemptions,
            spec_decode_num_proposals=spec.num_proposals if spec else 0,
            spec_decode_num_drafts=spec.num_drafts if spec else 0,
            spec_decode_num_draft_tokens=spec.num_draft_tokens if spec else 0,
            spec_decode_num_accepted_tokens=spec.num_accepted_tokens if spec else 0,
        )

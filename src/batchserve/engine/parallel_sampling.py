"""`n` completions of one prompt compute the prompt once: the siblings wait for the first one's KV.

All `n` children admitted together would each compute the whole prompt,
since no block is in the prefix cache until a step commits it. So only the
first child (the lead) goes to the scheduler; the others are held here until
the lead's prompt is computed and its full blocks committed, then added, and
they hit the prefix cache for everything but the tail past the last full
block. Holding is the input side's business: the scheduler and the KV cache
manager stay as they are (forking block tables would need copy-on-write of
the partial last block in the executor's cache).

A held sibling is released as soon as waiting for the lead no longer pays:
the lead's prompt is computed, it finished, or it was preempted (its
committed blocks stay cached for the siblings to hit). An abort of the
prompt aborts held siblings too. The lead is live in the scheduler while
anything is held, so nothing waits on a request that cannot progress.
"""

from __future__ import annotations

from ..config import CacheConfig
from ..core.batch import ScheduledBatch
from ..request import Request, RequestStatus


class SiblingGate:
    """Holds the 2nd..nth completions of a prompt until the 1st has put the prompt's blocks in the prefix cache."""

    def __init__(self, cache_config: CacheConfig) -> None:
        self.block_size = cache_config.block_size
        self.enable_prefix_caching = cache_config.enable_prefix_caching
        self._held: dict[Request, list[Request]] = {}  # lead -> its held siblings
        self.num_held = 0  # siblings held, all leads together

    def admit(self, children: list[Request]) -> list[Request]:
        """The children to add to the scheduler now; the rest wait for `release`.

        Holds only when a sibling could hit a block: prefix caching on and at
        least one full prompt block before the last token (whose logits each
        child needs, so it is always computed).
        """
        lead, siblings = children[0], children[1:]
        shareable = (lead.num_prompt_tokens - 1) // self.block_size > 0
        if not siblings or not self.enable_prefix_caching or not shareable:
            return children
        self._held[lead] = siblings
        self.num_held += len(siblings)
        return [lead]

    def release(self, batch: ScheduledBatch) -> list[Request]:
        """Siblings whose lead, scheduled or preempted in this step, no longer needs waiting for."""
        if not self._held:
            return []
        held = self._held
        released: list[Request] = []
        for lead in batch.requests:
            if lead in held and (lead.num_computed_tokens >= lead.num_prompt_tokens or lead.is_finished):
                released += held.pop(lead)
        for lead in batch.preempted:
            if lead in held:
                released += held.pop(lead)
        self.num_held -= len(released)
        return released

    def abort(self, lead: Request) -> None:
        """Abort the lead's held siblings (they were never admitted, so they hold no blocks)."""
        siblings = self._held.pop(lead, [])
        self.num_held -= len(siblings)
        for req in siblings:
            req.status = RequestStatus.FINISHED_ABORTED

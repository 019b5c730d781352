"""The sibling gate: which completions of an `n` > 1 prompt wait for the first one's prompt KV, and until when."""

from __future__ import annotations

from batchserve.config import CacheConfig
from batchserve.core.batch import ScheduledBatch
from batchserve.engine.parallel_sampling import SiblingGate
from batchserve.request import Request, RequestStatus, SamplingParams

BS = 16


def children(n: int, prompt_len: int) -> list[Request]:
    prompt = list(range(prompt_len))
    return [Request(f"p#{k}", prompt, SamplingParams()) for k in range(n)]


def gate(caching: bool = True) -> SiblingGate:
    return SiblingGate(CacheConfig(block_size=BS, num_blocks=64, enable_prefix_caching=caching))


def test_siblings_are_held_only_when_they_could_hit_a_block() -> None:
    g = gate()
    kids = children(3, BS + 1)  # one full block before the last token
    assert g.admit(kids) == kids[:1] and g.num_held == 2
    for kids in (children(1, 100), children(3, BS)):  # n = 1; the only full block holds the last token
        assert g.admit(kids) == kids
    kids = children(3, 100)
    assert gate(caching=False).admit(kids) == kids
    assert g.num_held == 2


def test_siblings_wait_for_the_last_prompt_chunk() -> None:
    g = gate()
    lead, *siblings = kids = children(3, 100)
    g.admit(kids)
    batch = ScheduledBatch(requests=[lead], num_tokens=[64])
    lead.num_computed_tokens = 64
    assert g.release(batch) == [] and g.num_held == 2
    lead.num_computed_tokens = 100
    assert g.release(batch) == siblings and g.num_held == 0
    assert g.release(batch) == []  # released once


def test_siblings_are_released_when_the_lead_finishes_or_is_preempted() -> None:
    g = gate()
    finished_lead, *a = kids = children(2, 100)
    g.admit(kids)
    finished_lead.status = RequestStatus.FINISHED_STOPPED
    assert g.release(ScheduledBatch(requests=[finished_lead])) == a
    preempted_lead, *b = kids = children(3, 100)
    g.admit(kids)
    assert g.release(ScheduledBatch(preempted=[preempted_lead])) == b and g.num_held == 0


def test_aborting_the_lead_aborts_its_held_siblings() -> None:
    g = gate()
    lead, *siblings = kids = children(3, 100)
    g.admit(kids)
    g.abort(lead)
    assert [s.status for s in siblings] == [RequestStatus.FINISHED_ABORTED] * 2 and g.num_held == 0
    lead.num_computed_tokens = 100
    assert g.release(ScheduledBatch(requests=[lead])) == []

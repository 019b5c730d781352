"""step_shape: what the cost model sees of a batch, padding of the engine's decode groups included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.attention_layout import AttentionConfig, padded_key_tokens
from batchserve.core.batch import ScheduledBatch
from batchserve.request import Request, SamplingParams
from batchserve.sim.decode_cohort import DecodeCohort
from batchserve.sim.executor import step_shape


def _decoding(rid: str, computed: int) -> Request:
    req = Request(rid, list(range(computed + 1)), SamplingParams(max_tokens=8))
    req.num_computed_tokens = computed
    return req


def test_decode_keys_are_padded_per_group_as_the_engine_pads_them() -> None:
    reqs = [_decoding("a", 999), _decoding("b", 799), _decoding("c", 99)]  # keys 1000, 800, 100
    batch = ScheduledBatch(requests=reqs, num_tokens=[1, 1, 1], num_computed=[999, 799, 99])
    shape = step_shape(batch, AttentionConfig(decode_bucket_ratio=0.7))
    assert shape.num_decodes == 3 and shape.decode_context_tokens == 1900
    assert shape.decode_key_tokens == 2 * 1000 + 100  # 800 rides in 1000's group, 100 alone
    assert step_shape(batch, AttentionConfig(decode_bucket_ratio=1.0)).decode_key_tokens == 1900


def test_a_cohort_counts_its_keys_unpadded_beside_the_listed_rows() -> None:
    batch = ScheduledBatch(requests=[_decoding("a", 499)], num_tokens=[1], num_computed=[499])
    shape = step_shape(batch, AttentionConfig(), num_lazy_decodes=10, lazy_decode_context=3000)
    assert shape.num_decodes == 11 and shape.decode_context_tokens == 3500 and shape.decode_key_tokens == 3500


@settings(max_examples=60, deadline=None)
@given(contexts=st.lists(st.integers(1, 3000), min_size=1, max_size=40), ratio=st.sampled_from([0.3, 0.7, 0.9, 1.0]),
       steps=st.integers(1, 50), leave=st.integers(0, 39))
def test_a_cohort_pads_its_decodes_as_the_engine_groups_them(contexts, ratio, steps, leave) -> None:
    """At every tick of a run, the cohort's padded keys equal decode_groups' padding of its members' keys."""
    cohort = DecodeCohort(block_size=16)
    members = [_decoding(str(i), c) for i, c in enumerate(contexts)]
    for req in members:
        req.block_ids = [0] * (req.num_computed_tokens // 16 + 1)
        cohort.join(req)
    if len(members) > 1:
        cohort.leave(members.pop(leave % len(members)))
    cohort.advance(3)
    keys = cohort.padded_keys(ratio, steps)
    for j in range(steps):
        lengths = [cohort.computed(r) + 1 + j for r in members]
        assert keys[j] == padded_key_tokens(lengths, ratio)
    extra = [5, 2500]
    assert cohort.padded_keys(ratio, extra=extra)[0] == padded_key_tokens(
        [cohort.computed(r) + 1 for r in members] + extra, ratio)

"""step_shape: what the cost model sees of a batch, padding of the engine's decode groups included."""

from __future__ import annotations

from batchserve.attention_layout import AttentionConfig
from batchserve.core.batch import ScheduledBatch
from batchserve.request import Request, SamplingParams
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

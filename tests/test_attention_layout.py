"""Decode grouping: the rule the torch backend pads by and the cost model counts by."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchserve.attention_layout import AttentionConfig, decode_groups, decode_layout


@given(st.lists(st.integers(1, 5000), max_size=64), st.sampled_from([0.5, 0.7, 0.9, 1.0]))
def test_groups_partition_the_rows_and_bound_the_padding(lengths: list[int], ratio: float) -> None:
    groups = decode_groups(lengths, ratio)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = lengths[g[0]]
        assert all(ratio * longest <= lengths[i] <= longest for i in g)
    assert sum(lengths) <= decode_layout(lengths, ratio)[0] <= sum(lengths) / ratio


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=64))
def test_ratio_zero_attends_every_decode_in_one_call_padded_to_the_longest(lengths: list[int]) -> None:
    assert decode_groups(lengths, 0.0) == [sorted(range(len(lengths)), key=lambda i: -lengths[i])]
    assert decode_layout(lengths, 0.0) == (len(lengths) * max(lengths), 1)


def test_a_ratio_outside_zero_to_one_is_refused_saying_what_zero_means() -> None:
    for ratio in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"decode_bucket_ratio must be in \[0, 1\] \(0: one padded call"):
            AttentionConfig(decode_bucket_ratio=ratio)


def test_equal_lengths_need_no_padding_and_a_spread_batch_pads_each_group_to_its_longest() -> None:
    assert decode_layout([300] * 16, 0.7)[0] == 16 * 300
    # 1000 and 800 share a group (800 >= 700); 500 starts one with 400 (400 >= 350); 100 is alone
    assert decode_groups([100, 800, 1000, 400, 500], 0.7) == [[2, 1], [4, 3], [0]]
    assert decode_layout([100, 800, 1000, 400, 500], 0.7)[0] == 2 * 1000 + 2 * 500 + 100


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=64))
def test_in_place_backends_are_costed_on_exactly_the_keys_of_their_rows_in_one_call(lengths: list[int]) -> None:
    for backend in ("flex", "cpp"):
        config = AttentionConfig(backend=backend)
        keys, groups = decode_layout(lengths, config.decode_padding_ratio)
        assert keys == sum(lengths) and config.decode_calls(groups) == 1
        assert decode_groups(lengths, config.decode_group_ratio) == [sorted(range(len(lengths)),
                                                                            key=lambda i: -lengths[i])]
    assert AttentionConfig().decode_padding_ratio == AttentionConfig().decode_bucket_ratio

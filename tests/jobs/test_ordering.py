"""Prefix-aware ordering: groups adjacent, anchors on the request that computes the shared prefix."""

from __future__ import annotations

from batchserve.jobs.batch_io import BadLine, BatchRequest
from batchserve.jobs.ordering import prefix_order, shared_blocks


def req(cid: str, ids: list[int]) -> BatchRequest:
    return BatchRequest(0, 0, cid, "/v1/completions", {}, prompt_token_ids=ids)


def test_groups_become_adjacent_and_anchor_on_their_first_request():
    a, b = [1] * 8, [2] * 8
    entries = [req("a1", a + [5]), req("b1", b + [5]), req("a2", a + [6]), BadLine(0, 9, None, "x"),
               req("b2", b + [6]), req("lone", [3, 4])]
    ordered = list(prefix_order(entries, window=100, block_size=4))
    assert isinstance(ordered[0], BadLine)  # bad lines are not held back
    assert [e.custom_id for e in ordered[1:]] == ["a1", "a2", "b1", "b2", "lone"]
    assert [e.anchor for e in ordered[1:]] == [None, "a1", None, "b1", None]


def test_nested_prefixes_anchor_on_the_longest_shared_run():
    system, doc = [1] * 8, [7] * 8
    entries = [req("s1", system + [2, 2, 2, 2, 0]), req("d1", system + doc + [1]), req("d2", system + doc + [2]),
               req("d3", system + doc + [3])]
    ordered = list(prefix_order(entries, window=10, block_size=4))
    assert [e.custom_id for e in ordered] == ["s1", "d1", "d2", "d3"]
    assert [e.anchor for e in ordered] == [None, "s1", "d1", "d1"]


def test_window_bounds_the_regrouping():
    entries = [req(str(i), [i % 2] * 8 + [i]) for i in range(6)]
    ordered = [e.custom_id for e in prefix_order(entries, window=3, block_size=4)]
    assert ordered == ["0", "2", "1", "4", "3", "5"]  # 1 and 3 share a prefix but not a window


def test_shared_blocks_counts_full_blocks_leaving_one_token_to_compute():
    assert shared_blocks([1] * 8, [1] * 8, 4) == 1  # 7 reusable tokens: one full block
    assert shared_blocks([1] * 9, [1] * 8 + [2], 4) == 2
    assert shared_blocks([1, 2], [2, 1], 4) == 0

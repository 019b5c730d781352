"""BlockPool: reference counts, the free queue's LRU order, and the prefix-cache map."""

from __future__ import annotations

import pytest

from batchserve.core.block_pool import BlockPool


def ref_counts(pool: BlockPool) -> list[int]:
    """Every block's ref count, the never-used ones (not materialised) included."""
    return [b.ref_cnt for b in pool.blocks] + [0] * pool.num_unused_blocks


def test_new_pool_is_all_free_and_uncached() -> None:
    pool = BlockPool(4)
    assert pool.num_free_blocks == 4
    assert pool.usage == 0.0
    assert pool.num_cached_blocks == 0
    assert ref_counts(pool) == [0, 0, 0, 0]


def test_a_huge_pool_is_created_at_once_and_hands_out_ids_in_order() -> None:
    """No per-block work up front: a pool of 10^12 blocks sets up instantly and materialises what it hands out."""
    pool = BlockPool(10**12)
    assert pool.num_free_blocks == 10**12 and pool.num_unused_blocks == 10**12
    assert pool.allocate(3) == [0, 1, 2]
    assert len(pool.blocks) == 3
    assert pool.num_free_blocks == 10**12 - 3


def test_never_used_blocks_are_handed_out_before_freed_ones() -> None:
    """The order a queue of every id would give: unused ids (in id order) ahead of any freed block."""
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.free([b])
    pool.free([a])
    assert pool.num_free_blocks == 4
    assert pool.allocate(4) == [2, 3, b, a]
    assert pool.num_unused_blocks == 0


@pytest.mark.parametrize("n", [0, -1])
def test_pool_needs_at_least_one_block(n: int) -> None:
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(n)


def test_allocate_hands_out_distinct_blocks_with_ref_count_one() -> None:
    pool = BlockPool(5)
    got = pool.allocate(3)
    assert got == [0, 1, 2]  # a fresh pool hands out blocks in id order
    assert len(set(got)) == 3
    assert [pool.blocks[b].ref_cnt for b in got] == [1, 1, 1]
    assert pool.num_free_blocks == 2
    assert pool.usage == pytest.approx(3 / 5)
    assert pool.allocate(0) == []
    assert pool.num_free_blocks == 2


def test_allocate_more_than_free_raises_and_changes_nothing() -> None:
    pool = BlockPool(3)
    pool.allocate(2)
    before = ref_counts(pool)
    with pytest.raises(RuntimeError, match="2 blocks with only 1 free"):
        pool.allocate(2)
    assert ref_counts(pool) == before
    assert pool.num_free_blocks == 1


def test_touch_and_free_track_holders() -> None:
    """touch adds a holder; a block returns to the free queue only when its last holder frees it."""
    pool = BlockPool(3)
    (b,) = pool.allocate(1)
    pool.touch([b])
    pool.touch([b])
    assert pool.blocks[b].ref_cnt == 3
    assert pool.num_free_blocks == 2
    pool.free([b])
    pool.free([b])
    assert pool.blocks[b].ref_cnt == 1
    assert pool.num_free_blocks == 2  # still held
    pool.free([b])
    assert pool.blocks[b].ref_cnt == 0
    assert pool.num_free_blocks == 3


def test_touch_of_a_free_cached_block_takes_it_off_the_free_queue() -> None:
    pool = BlockPool(3)
    (b,) = pool.allocate(1)
    pool.cache_blocks([b], [1234])
    pool.free([b])
    assert pool.num_free_blocks == 3
    assert pool.num_evictable_in([b]) == 1
    pool.touch([b])  # a prefix hit on a cached, unreferenced block
    assert pool.blocks[b].ref_cnt == 1
    assert pool.num_free_blocks == 2
    assert pool.num_evictable_in([b]) == 0
    # The block is held, so allocation can never hand it out (nor evict its hash).
    others = pool.allocate(2)
    assert b not in others
    assert pool.lookup(1234) == b


def test_freeing_below_zero_raises() -> None:
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError, match=f"block {b} freed more times than it was held"):
        pool.free([b])


def test_freeing_a_never_allocated_block_raises() -> None:
    with pytest.raises(RuntimeError, match="freed more times"):
        BlockPool(2).free([1])


def test_lru_order_blocks_freed_earlier_are_reused_first() -> None:
    """The free queue is least recently freed first: allocation takes the coldest block."""
    pool = BlockPool(4)
    a, b, c, d = pool.allocate(4)
    for blk in (c, a, d, b):
        pool.free([blk])
    assert pool.allocate(4) == [c, a, d, b]


def test_request_blocks_freed_tail_first_evict_the_tail_first() -> None:
    """A request's blocks, freed tail first, are evicted tail first: the shareable head survives longest."""
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    for i, blk in enumerate(blocks):
        pool.cache_blocks([blk], [100 + i])
    pool.free(reversed(blocks))  # what KVCacheManager.free does
    (first,) = pool.allocate(1)
    assert first == blocks[-1]
    assert pool.lookup(103) is None  # the tail's hash is gone
    assert [pool.lookup(h) for h in (100, 101, 102)] == blocks[:3]  # the head is still cached
    assert pool.allocate(2) == [blocks[2], blocks[1]]
    assert pool.lookup(100) == blocks[0]


def test_evicts_the_least_recently_freed_cached_block_first() -> None:
    pool = BlockPool(3)
    x, y, z = pool.allocate(3)
    pool.cache_blocks([x], [1])
    pool.cache_blocks([y], [2])
    pool.cache_blocks([z], [3])
    pool.free([y])
    pool.free([x])
    pool.free([z])
    # A hit on y puts it back in use; freeing it again makes it the most recently used.
    pool.touch([y])
    pool.free([y])
    assert pool.allocate(1) == [x]
    assert pool.lookup(1) is None and pool.lookup(2) == y and pool.lookup(3) == z
    assert pool.num_evictions == 1
    assert pool.allocate(1) == [z]
    assert pool.allocate(1) == [y]
    assert pool.num_evictions == 3
    assert pool.num_cached_blocks == 0


def test_evicted_block_loses_its_hash() -> None:
    pool = BlockPool(1)
    (b,) = pool.allocate(1)
    pool.cache_blocks([b], [42])
    pool.free([b])
    assert pool.lookup(42) == b  # cached while free
    assert pool.allocate(1) == [b]
    assert pool.lookup(42) is None
    assert pool.blocks[b].block_hash is None
    assert pool.num_cached_blocks == 0
    assert pool.num_evictions == 1


def test_allocating_an_uncached_free_block_is_not_an_eviction() -> None:
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.free([b])
    pool.allocate(2)
    assert pool.num_evictions == 0


def test_cache_block_first_block_with_a_hash_wins() -> None:
    pool = BlockPool(3)
    a, b, _ = pool.allocate(3)
    pool.cache_blocks([a], [7])
    pool.cache_blocks([b], [7])  # same content computed twice: the first registration stays
    assert pool.lookup(7) == a
    assert pool.blocks[b].block_hash is None
    assert pool.num_cached_blocks == 1


def test_cache_block_keeps_a_blocks_first_hash() -> None:
    pool = BlockPool(2)
    (a,) = pool.allocate(1)
    pool.cache_blocks([a], [7])
    pool.cache_blocks([a], [8])
    assert pool.lookup(7) == a
    assert pool.lookup(8) is None
    assert pool.blocks[a].block_hash == 7


def test_hash_is_free_again_after_its_block_is_evicted() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache_blocks([a], [7])
    pool.free([a])
    assert pool.allocate(1) == [a]  # evicts hash 7
    pool.cache_blocks([b], [7])
    assert pool.lookup(7) == b


def test_lookup_unknown_hash_is_none() -> None:
    assert BlockPool(2).lookup(99) is None


def test_reset_prefix_cache_forgets_every_hash_but_keeps_ref_counts() -> None:
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.cache_blocks([a], [1])
    pool.cache_blocks([b], [2])
    pool.free([b])
    pool.reset_prefix_cache()
    assert pool.lookup(1) is None and pool.lookup(2) is None
    assert all(blk.block_hash is None for blk in pool.blocks)
    assert ref_counts(pool) == [1, 0, 1]
    assert pool.num_free_blocks == 1
    pool.allocate(1)
    assert pool.num_evictions == 0  # the reset already dropped b's hash


def test_num_evictable_in_counts_unreferenced_blocks() -> None:
    pool = BlockPool(4)
    a, b, c = pool.allocate(3)
    pool.free([b])
    assert pool.num_evictable_in([a, b, c, 3]) == 2  # b and the never-used block 3
    assert pool.num_evictable_in([]) == 0


def test_would_evict_any_looks_past_never_used_blocks_in_lru_order() -> None:
    pool = BlockPool(4)
    a, b, c = pool.allocate(3)
    pool.free([b])
    pool.free([a])  # free queue: b, a; block 3 never used
    assert not pool.would_evict_any(1, [a, b])  # the never-used block goes first
    assert pool.would_evict_any(2, [b]) and not pool.would_evict_any(2, [a, c])
    assert pool.would_evict_any(3, [a])
    assert not pool.would_evict_any(0, [a, b])

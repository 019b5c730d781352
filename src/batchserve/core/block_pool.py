"""Fixed-size KV blocks with reference counts, a prefix cache and LRU eviction.

A block with ref count 0 is *free* but keeps its cached content until it is
handed out again: the free queue is ordered least recently used first, so
allocation evicts the coldest cached block.

Blocks never handed out are not materialised: they are the ids from a
high-water mark up, handed out in id order before any freed block (the order
a queue of every id would give), so a pool of any size is O(1) to create.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable


class KVBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None  # set while the block is registered in the prefix cache


class BlockPool:
    """Owns every block; nothing else changes ref counts or the cache map."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"a block pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks: list[KVBlock] = []  # blocks handed out at least once, by id (ids 0..len-1)
        self.num_unused_blocks = num_blocks  # blocks never handed out: the ids from len(blocks) up
        # Freed blocks in LRU order (front = evict first). Values unused.
        self._free: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[int, int] = {}  # block hash -> block id
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out, cached-but-unreferenced ones included."""
        return len(self._free) + self.num_unused_blocks

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks (evicting their cached content) with ref count 1."""
        if n > self.num_free_blocks:
            raise RuntimeError(f"asked for {n} blocks with only {self.num_free_blocks} free")
        return [self.allocate_one() for _ in range(n)]

    def allocate_one(self) -> int:
        """Take the least recently used free block (evicting its cached content) with ref count 1."""
        if self.num_unused_blocks:  # never-used blocks come first, in id order
            bid = self.num_blocks - self.num_unused_blocks
            self.num_unused_blocks -= 1
            block = KVBlock(bid)
            self.blocks.append(block)
        else:
            bid = self._free.popitem(last=False)[0]
            block = self.blocks[bid]
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                block.block_hash = None
                self.num_evictions += 1
        block.ref_cnt = 1
        return bid

    def lookup(self, block_hash: int) -> int | None:
        return self._cached.get(block_hash)

    def touch(self, block_ids: Iterable[int]) -> None:
        """Add a holder to cached blocks (a prefix hit), taking them off the free queue."""
        for bid in block_ids:
            block = self.blocks[bid]
            if block.ref_cnt == 0:
                del self._free[bid]
            block.ref_cnt += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop a holder; blocks reaching 0 join the free queue as most recently used.

        Callers pass a request's blocks tail first, so a prompt's later blocks
        are evicted before its earlier (more shareable) ones.
        """
        blocks = self.blocks
        bid = None
        try:
            for bid in block_ids:
                block = blocks[bid]
                block.ref_cnt -= 1
                if block.ref_cnt == 0:
                    self._free[bid] = None
                elif block.ref_cnt < 0:
                    raise RuntimeError(f"block {bid} freed more times than it was held")
        except IndexError:  # a block never handed out
            raise RuntimeError(f"block {bid} freed more times than it was held") from None

    def cache_blocks(self, block_ids: list[int], block_hashes: list[int]) -> None:
        """Register full, computed blocks under their hashes; the first block with a hash wins."""
        cached, blocks = self._cached, self.blocks
        for bid, block_hash in zip(block_ids, block_hashes):
            block = blocks[bid]
            if block.block_hash is None and block_hash not in cached:
                cached[block_hash] = bid
                block.block_hash = block_hash

    def would_evict_any(self, n: int, block_ids: Iterable[int]) -> bool:
        """Whether the next `n` allocations would take any of these blocks, evicting its cached content."""
        num_reused = n - self.num_unused_blocks  # never-used blocks go first
        if num_reused <= 0:
            return False
        taken = set(itertools.islice(self._free, num_reused))
        return any(bid in taken for bid in block_ids)

    def num_evictable_in(self, block_ids: Iterable[int]) -> int:
        """How many of these blocks sit on the free queue (a hit on them consumes a free block)."""
        blocks = self.blocks
        used = len(blocks)
        return sum(1 for bid in block_ids if bid >= used or blocks[bid].ref_cnt == 0)

    def reset_prefix_cache(self) -> None:
        for block_hash, bid in self._cached.items():
            self.blocks[bid].block_hash = None
        self._cached.clear()

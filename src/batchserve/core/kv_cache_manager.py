"""Block tables on top of the block pool: prefix lookup, slot allocation, freeing.

A request's blocks cover exactly its computed tokens plus the ones being
computed. A full block is identified by hash(parent hash, its token ids,
adapter id), so any request with the same prefix (and adapter) can share it.
"""

from __future__ import annotations

from ..config import CacheConfig
from ..request import Request
from .block_pool import BlockPool

_ROOT_HASH = 0


class KVCacheManager:
    def __init__(self, config: CacheConfig) -> None:
        self.block_size = config.block_size
        self.enable_caching = config.enable_prefix_caching
        self.pool = BlockPool(config.num_blocks)
        self.num_queries = 0  # prompt tokens looked up in the prefix cache
        self.num_hits = 0  # of which served from it

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def hash_blocks(self, req: Request, num_full_blocks: int) -> list[int]:
        """Extend the request's chained block hashes to `num_full_blocks` blocks."""
        hashes = req.block_hashes
        if len(hashes) >= num_full_blocks:
            return hashes
        bs = self.block_size
        parent = hashes[-1] if hashes else _ROOT_HASH
        for i in range(len(hashes), num_full_blocks):
            parent = hash((parent, tuple(req.tokens(i * bs, (i + 1) * bs)), req.adapter_id))
            hashes.append(parent)
        return hashes

    def get_computed_blocks(self, req: Request) -> list[int]:
        """Longest run of cached full blocks at the start of the request's tokens.

        At least one token is always left to compute, since its logits are needed; a request that
        wants its prompt's logprobs computes every position.
        """
        if not self.enable_caching or req.sampling_params.prompt_logprobs is not None:
            return []
        num_full = (req.num_tokens - 1) // self.block_size
        hits: list[int] = []
        lookup = self.pool.lookup
        for h in self.hash_blocks(req, num_full)[:num_full]:
            bid = lookup(h)
            if bid is None:
                break
            hits.append(bid)
        return hits

    def count_cached_tokens(self, req: Request) -> int:
        """Tokens a prefix lookup would serve now (for `lpm` ranking and routers); no side effects."""
        return len(self.get_computed_blocks(req)) * self.block_size

    def shared_blocks(self, req: Request) -> list[int]:
        """The request's blocks that another request holds too (prefix-cache hits). Not only a leading run: two
        requests that computed the same prefix at once hold twin blocks, and a third may hit either twin."""
        blocks = self.pool.blocks
        return [bid for bid in req.block_ids if blocks[bid].ref_cnt > 1]

    def can_allocate(self, req: Request, num_new_tokens: int, computed_blocks: list[int] = (), reserve: int = 0) -> bool:
        num_computed = req.num_computed_tokens + len(computed_blocks) * self.block_size
        need = self.blocks_needed(num_computed + num_new_tokens) - len(req.block_ids) - len(computed_blocks)
        if computed_blocks:
            need += self.pool.num_evictable_in(computed_blocks)
        return need + reserve <= self.pool.num_free_blocks

    def allocate_slots(
        self, req: Request, num_new_tokens: int, computed_blocks: list[int] = (), reserve: int = 0
    ) -> bool:
        """Give the request blocks for `num_new_tokens` more tokens, after taking `computed_blocks`.

        Returns False and changes nothing when fewer than `reserve` blocks would
        stay free. On success the request's num_computed_tokens includes the hits.
        """
        if not self.can_allocate(req, num_new_tokens, computed_blocks, reserve):
            return False
        if computed_blocks:
            self.pool.touch(computed_blocks)
            req.block_ids.extend(computed_blocks)
            req.num_computed_tokens += len(computed_blocks) * self.block_size
            req.num_committed_blocks = len(req.block_ids)
        need = self.blocks_needed(req.num_computed_tokens + num_new_tokens) - len(req.block_ids)
        if need > 0:
            req.block_ids.extend(self.pool.allocate(need))
        return True

    def commit(self, req: Request) -> None:
        """Register the request's newly computed full blocks in the prefix cache."""
        num_full = min(req.num_computed_tokens, req.num_tokens) // self.block_size
        if not self.enable_caching or num_full <= req.num_committed_blocks:
            return
        hashes = self.hash_blocks(req, num_full)
        start = req.num_committed_blocks
        self.pool.cache_blocks(req.block_ids[start:num_full], hashes[start:num_full])
        req.num_committed_blocks = num_full

    def trim(self, req: Request) -> None:
        """Give back blocks past the request's computed tokens (those only rejected draft tokens used)."""
        keep = self.blocks_needed(req.num_computed_tokens)
        if len(req.block_ids) > keep:
            self.pool.free(reversed(req.block_ids[keep:]))
            del req.block_ids[keep:]

    def free(self, req: Request) -> None:
        """Release the request's blocks; its computed full blocks stay cached until evicted."""
        self.commit(req)
        self.pool.free(reversed(req.block_ids))
        req.block_ids = []
        req.num_committed_blocks = 0

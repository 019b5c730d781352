"""In-place paged attention with PyTorch FlexAttention: K/V are read from the block pool through the block table.

The plain-torch backend (attention.py) copies each row's keys into a padded
tensor before SDPA; here the pool itself, viewed as one long key axis of
num_blocks * block_size slots, is the key tensor, and a BlockMask built from
the block tables tells the kernel which pool blocks each query visits. Every
query token that needs cached keys is one batch row, so decodes and prompt
chunks on cached context share one call; a row's queries are, per KV head, the
query heads that share it (GQA), so its keys are read once per group. A row's blocks strictly
inside its visible range are "full" (no mask evaluated); only its first block
(sliding window) and last block (its own position) are masked.

flex_attention is only fast compiled (inductor's C++ template on CPU, Triton
on CUDA); the row count is a dynamic dimension, so it compiles once for one
row and once for more, not per batch shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

FLEX_RECOMPILE_LIMIT = 64
"""Graphs dynamo may keep for flex_attention (one per dtype, head layout, block size, and one row vs many): its
default limit of 8 is reached by a process that builds several engines, as a test run or a notebook does."""
_compiled_flex = torch.compile(flex_attention, fullgraph=True)
"""fullgraph: past the recompile limit dynamo fails instead of running flex_attention uncompiled, whose dense
math path evaluates the mask on every pool slot and ignores the block mask's sparsity. Our mask is only defined
inside a row's first and last block, so that path returns attention over the whole pool: wrong, silently."""


TRITON_MIN_TILE = 16
"""The smallest query or key tile of Triton's flex kernels (a tensor-core product's side). On CUDA the block mask's
blocks must be multiples of the kernel's tiles: torch 2.11 refuses a query block of 1 ("Q and KV block size must be
divisible by BLOCK_M and BLOCK_N"; H200, bench/RESULTS.md, session 25), and a 16-slot pool block is below the
default key tile of 64."""

Q_BLOCK_SIZE = 128
"""The block mask's query block (FlexAttention's default): a row's queries (its KV head's group of query heads) fit
in one block, so the mask has one query block per row; the kernel masks the rows past them."""


def cuda_kernel_options(block_size: int) -> dict[str, int]:
    """Triton's key tile: the largest power of two up to the default 64 that divides a pool block, so that each
    tile lies in one block of the mask."""
    return {"BLOCK_N": math.gcd(block_size, 64)}


class FlexRecompileLimitError(RuntimeError):
    """flex_attention needed more compiled graphs than dynamo's recompile limit allows."""


@dataclass
class FlexPlan:
    """The query rows that read the cache and their block mask over the pool; shared by every layer of a step."""

    rows: torch.Tensor | None
    """[R] indices of those tokens in the flat batch; None: every token, in order."""
    blocks: tuple[torch.Tensor, ...]
    """The mask's tensors: per row, partial block count and ids, full block count and ids, and bounds."""
    block_size: int


def flex_plan(rows: list[int], seq_of_row: list[int], positions: list[int], block_tables: list[list[int]],
              block_size: int, num_pool_blocks: int, window: int | None, device: torch.device,
              every_row: bool) -> FlexPlan:
    """Block mask of query rows r (token rows[r] of sequence seq_of_row[r] at positions[r]) over the pool."""
    width = max(len(t) for t in block_tables)
    tables = torch.tensor([t + [t[-1]] * (width - len(t)) for t in block_tables], dtype=torch.int32)
    table = tables[torch.tensor(seq_of_row)]  # [R, width]: each row's own block table
    pos = torch.tensor(positions)
    lo = pos - window + 1 if window is not None else torch.zeros_like(pos)
    lo = lo.clamp(min=0)
    first, last = lo // block_size, pos // block_size
    cols = torch.arange(width)
    # full blocks: logical first+1 .. last-1, packed to the front of each row
    num_full = (last - first - 1).clamp(min=0)
    full = table.gather(1, (first[:, None] + 1 + cols).clamp(max=width - 1))
    full = full.masked_fill(cols >= num_full[:, None], 0)
    first_phys = table.gather(1, first[:, None])[:, 0]
    last_phys = table.gather(1, last[:, None])[:, 0]
    partial = torch.stack([last_phys, first_phys], dim=1)
    num_partial = 1 + (first != last).int()

    def pad(blocks: torch.Tensor) -> torch.Tensor:  # [R, n] -> [R, 1, 1, pool]: the kernel wants the pool's width
        return F.pad(blocks, (0, num_pool_blocks - blocks.shape[1]))[:, None, None].to(device, non_blocking=True)

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=torch.int32, non_blocking=True)

    # one captured tensor (the CPU template miscompiles several captured tensors of a dynamic size):
    # per row, its first and last physical block and the offsets its visible keys start and end at
    bounds = to_device(torch.stack([first_phys, lo % block_size, last_phys, pos % block_size], dim=1))
    blocks = (to_device(num_partial)[:, None, None], pad(partial), to_device(num_full)[:, None, None], pad(full),
              bounds)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, FLEX_RECOMPILE_LIMIT)
    if len(rows) > 1:  # one graph for every row count (a size-1 dimension always specializes)
        for t in blocks:
            torch._dynamo.maybe_mark_dynamic(t, 0)
    index = None if every_row else torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)
    return FlexPlan(index, blocks, block_size)


def _block_mask(blocks: tuple[torch.Tensor, ...], block_size: int, queries: int) -> BlockMask:
    """FlexAttention's mask from a plan's tensors, for `queries` queries a row: full blocks unmasked, a row's first
    and last block masked. Building it is a few microseconds: each layer builds its own."""
    num_partial, partial, num_full, full, bounds = blocks

    def visible(b, h, q_idx, kv_idx):  # only evaluated in a row's first and last block
        block, offset = kv_idx // block_size, kv_idx % block_size
        return (((block != bounds[b, 2]) | (offset <= bounds[b, 3]))
                & ((block != bounds[b, 0]) | (offset >= bounds[b, 1])))

    return BlockMask.from_kv_blocks(
        num_partial, partial, num_full, full,
        BLOCK_SIZE=(Q_BLOCK_SIZE, block_size), mask_mod=visible, seq_lengths=(queries, partial.shape[-1] * block_size),
        compute_q_blocks=False)  # q blocks only serve the backward pass


def flex_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: FlexPlan,
                         scale: float) -> torch.Tensor:
    """q [R, heads, head_dim] (the plan's rows) against the pool k/v_cache [slots, kv_heads, head_dim], same dtype.

    Inside a compiled step (compiled_decode.py) the kernel runs as an opaque op, its own compiled call:
    inductor's CPU FlexAttention template miscompiles inside a larger graph (torch 2.13: C++ that does not
    build, or a failed lowering of a query that is a view).
    """
    attend = flex_pool_attention if torch.compiler.is_compiling() else _flex_pool
    return attend(q, k_cache, v_cache, *plan.blocks, plan.block_size, scale)


def _flex_pool(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, num_partial: torch.Tensor,
               partial: torch.Tensor, num_full: torch.Tensor, full: torch.Tensor, bounds: torch.Tensor,
               block_size: int, scale: float) -> torch.Tensor:
    """Each KV head's group of query heads is that head's queries (query axis G, not G heads of one query): the
    kernel reads a group's keys and values once, where enable_gqa's layout reads them once per query head."""
    rows, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    # contiguous, as q is a view into the fused QKV projection or a gathered copy, and a stride change would
    # recompile
    queries = q.contiguous().view(rows, kv_heads, heads // kv_heads, dim)
    keys = k_cache.transpose(0, 1)[None]  # [1, kv_heads, slots, head_dim]: a view, the pool is not copied
    values = v_cache.transpose(0, 1)[None]
    if rows > 1:
        torch._dynamo.mark_dynamic(queries, 0)
    block_mask = _block_mask((num_partial, partial, num_full, full, bounds), block_size, queries.shape[2])
    options = cuda_kernel_options(block_size) if queries.is_cuda else None
    try:
        out = _compiled_flex(queries, keys, values, block_mask=block_mask, scale=scale, kernel_options=options)
    except torch._dynamo.exc.FailOnRecompileLimitHit as err:
        raise FlexRecompileLimitError(
            f"the flex attention backend needed more than {torch._dynamo.config.recompile_limit} compiled graphs "
            "(torch._dynamo.config.recompile_limit) in this process: raise that limit, or use --attention-backend "
            "torch") from err
    return out.reshape(rows, heads, dim)


@torch.library.custom_op("batchserve::flex_pool_attention", mutates_args=())
def flex_pool_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, num_partial: torch.Tensor,
                        partial: torch.Tensor, num_full: torch.Tensor, full: torch.Tensor, bounds: torch.Tensor,
                        block_size: int, scale: float) -> torch.Tensor:
    """flex_paged_attention as one op of a compiled graph."""
    return _flex_pool(q, k_cache, v_cache, num_partial, partial, num_full, full, bounds, block_size, scale)


@flex_pool_attention.register_fake
def _(q, k_cache, v_cache, num_partial, partial, num_full, full, bounds, block_size, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)

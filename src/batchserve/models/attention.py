"""Paged attention in plain torch: K/V live in fixed-size blocks, a block table maps each sequence onto them.

The backend is one small interface (AttentionMetadata in, PagedAttention.forward)
so a fused kernel can replace it later. This version gathers each sequence's
keys by slot index and calls scaled_dot_product_attention: decodes (one new
token each) in a few padded calls, one per group of similar context lengths,
with a key-padding mask; prompt chunks one call each. Grouped-query attention never copies K/V: decodes fold the query heads
that share a KV head into the query axis, prompt chunks broadcast each KV head
(stride 0) to its query heads; each layout was the faster one on CPU. On the
cpp backend nothing is copied: one call of a C++ kernel reads the decode rows'
keys in place through the same slots and mask, and one a chunk reads its context
and itself, flash-style (models/paged_decode.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..attention_layout import AttentionConfig, decode_groups
from ..model_config import ModelConfig
from .batch_invariant import per_token_attention
from .flex_attention import FlexPlan, flex_paged_attention, flex_plan
from .paged_decode import paged_decode, paged_prefill, prefill_in_place

KVCache = tuple[torch.Tensor, torch.Tensor]

# cuDNN's SDPA builds a graph per shape, and key lengths change every step: measured on an H200 it
# cost 1.9 ms of CPU per call, 40% of a decode step. The other CUDA kernels take masks without that.
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    if q.is_cuda:
        with sdpa_kernel(_CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@dataclass
class AttentionMetadata:
    """Layout of one step's flat batch: B sequences, T new tokens in all (no padding)."""

    slot_mapping: torch.Tensor
    """[T] int64: cache slot (block_id * block_size + offset) where each new token's K/V is written."""
    query_start_loc: list[int]
    """len B+1, cumulative new-token counts; sequence i owns tokens [qsl[i], qsl[i+1])."""
    context_lens: list[int]
    """Tokens already cached for sequence i before this step (prefix-cache hits included)."""
    block_tables: list[list[int]]
    """Sequence i's block ids, covering context_lens[i] + its new tokens."""
    block_size: int
    config: AttentionConfig = AttentionConfig()
    """The backend's knobs."""
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """Gather indices and masks, built by the first layer and reused by the rest."""

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @classmethod
    def of_rows(cls, block_tables: list[list[int]], context_lens: list[int], num_new: list[int], block_size: int,
                device: torch.device | str, config: AttentionConfig) -> tuple[torch.Tensor, AttentionMetadata]:
        """Positions [T] and the layout of a flat batch whose row i is num_new[i] tokens after context_lens[i]."""
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        for table, c, n in zip(block_tables, context_lens, num_new, strict=True):
            positions += range(c, c + n)
            slots += [table[p // block_size] * block_size + p % block_size for p in range(c, c + n)]
            query_start.append(query_start[-1] + n)
        meta = cls(torch.tensor(slots, dtype=torch.long, device=device), query_start, list(context_lens),
                   block_tables, block_size, config)
        return torch.tensor(positions, dtype=torch.long, device=device), meta


@dataclass
class DecodeMetadata:
    """A pure decode step (one new token per sequence, all in one padded call) as tensors only.

    What a compiled decode step takes: nothing in it is a Python list whose
    values torch.compile would have to guard on, so one graph serves every
    batch size and context length.
    """

    slot_mapping: torch.Tensor
    """[B] cache slot where each sequence's new K/V is written."""
    key_slots: torch.Tensor
    """[B, L] cache slots of each sequence's keys; padding repeats a real slot."""
    key_mask: torch.Tensor
    """[B, 1, 1, L] True where the query may attend."""
    in_place: bool = False
    """Attend with the cpp backend's kernel, which reads key_slots in place (models/paged_decode.py)."""


def decode_metadata(meta: AttentionMetadata, window: int | None) -> DecodeMetadata | None:
    """meta as one padded decode call, or None when the step holds prompt chunks or several decode groups."""
    decodes, prefills = _plans(meta, window)
    if prefills or len(decodes) != 1 or decodes[0].token_idx is not None:
        return None
    return DecodeMetadata(meta.slot_mapping, decodes[0].key_slots, decodes[0].key_mask, meta.config.backend == "cpp")


@dataclass
class FlexDecodeMetadata:
    """A pure decode step on the flex backend as tensors only (what a compiled step takes, as DecodeMetadata)."""

    slot_mapping: torch.Tensor
    """[B] cache slot where each sequence's new K/V is written."""
    plan: FlexPlan
    """Every row's block mask over the pool."""


def flex_decode_metadata(meta: AttentionMetadata, window: int | None, num_pool_blocks: int) -> FlexDecodeMetadata:
    """A pure decode step's layout (one new token per sequence) for the flex backend."""
    plan, _ = _flex_plans(meta, window, num_pool_blocks)
    return FlexDecodeMetadata(meta.slot_mapping, plan)


@dataclass
class _DecodePlan:
    """All one-token sequences as a padded batch of D rows and L key slots."""

    token_idx: torch.Tensor | None  # [D] rows of q/out; None: every row of the batch, in order
    key_slots: torch.Tensor  # [D, L] flat cache slots; padding repeats a real slot
    key_mask: torch.Tensor  # [D, 1, 1, L] True where the query may attend


@dataclass
class _PrefillPlan:
    """One sequence with several new tokens (a prompt chunk)."""

    start: int
    end: int
    key_slots: torch.Tensor | None  # [S] slots of keys 0..S-1; None: no context, use the new k/v as they are
    context: int  # keys cached before the chunk (S - n)
    window: int | None
    device: torch.device

    @cached_property
    def mask(self) -> torch.Tensor:
        """[n, S] True where query i may see key j; built by the first layer that asks (the in-place kernel of
        the cpp backend needs none)."""
        positions = torch.arange(self.context + self.end - self.start)
        mask = _visible(positions[self.context:, None], positions[None, :], self.window)
        return mask.to(self.device, non_blocking=True)


def _slots(block_tables: list[list[int]], lens: list[int], block_size: int, device: torch.device) -> torch.Tensor:
    """[N, max(lens)] cache slots of keys 0..len-1 per sequence, padding rows with their last real slot."""
    width = max(len(t) for t in block_tables)
    table = torch.tensor([t + [t[-1]] * (width - len(t)) for t in block_tables], dtype=torch.long)
    pos = torch.arange(max(lens), dtype=torch.long)[None, :]
    pos = torch.minimum(pos, torch.tensor(lens, dtype=torch.long)[:, None] - 1)
    slots = table.gather(1, pos // block_size) * block_size + pos % block_size
    return slots.to(device, non_blocking=True)


def _sequence_slots(meta: AttentionMetadata) -> list[torch.Tensor]:
    """Each sequence's cache slots of keys 0..(its last new token), built by the first layer."""
    slots = meta._plans.get("sequence_slots")
    if slots is None:
        qsl, device = meta.query_start_loc, meta.slot_mapping.device
        slots = meta._plans["sequence_slots"] = [
            _slots([table], [ctx + qsl[i + 1] - qsl[i]], meta.block_size, device)[0]
            for i, (table, ctx) in enumerate(zip(meta.block_tables, meta.context_lens))]
    return slots


def _flex_plans(meta: AttentionMetadata, window: int | None,
                num_pool_blocks: int) -> tuple[FlexPlan | None, list[_PrefillPlan]]:
    """The flex backend's plan for the tokens on cached keys (decodes, chunks on context) and the fresh prompt
    chunks, which attend their own new k/v; built by the first layer and reused by the rest."""
    key = ("flex", window)
    if key not in meta._plans:
        qsl, ctx, device = meta.query_start_loc, meta.context_lens, meta.slot_mapping.device
        rows, seqs, positions, fresh = [], [], [], []
        for i in range(meta.num_seqs):
            n = qsl[i + 1] - qsl[i]
            if n == 1 or ctx[i]:
                rows += range(qsl[i], qsl[i + 1])
                seqs += [i] * n
                positions += range(ctx[i], ctx[i] + n)
            elif n:
                fresh.append(_PrefillPlan(qsl[i], qsl[i + 1], None, 0, window, device))
        plan = flex_plan(rows, seqs, positions, meta.block_tables, meta.block_size, num_pool_blocks, window,
                         device, every_row=len(rows) == qsl[-1]) if rows else None
        meta._plans[key] = plan, fresh
    return meta._plans[key]


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Causal (and sliding-window) mask: a query sees keys at its position or before, within the window."""
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


def _plans(meta: AttentionMetadata, window: int | None) -> tuple[list[_DecodePlan], list[_PrefillPlan]]:
    """The step's plans for this window, built by the first layer that asks and reused by the rest."""
    plans = meta._plans.get(window)
    if plans is None:
        plans = meta._plans[window] = _plan(meta, window)
    return plans


def _plan(meta: AttentionMetadata, window: int | None) -> tuple[list[_DecodePlan], list[_PrefillPlan]]:
    qsl, ctx, tables = meta.query_start_loc, meta.context_lens, meta.block_tables
    if not len(qsl) == len(ctx) + 1 == len(tables) + 1:
        raise ValueError(f"AttentionMetadata: {len(qsl)} query_start_loc entries, {len(ctx)} context_lens, "
                         f"{len(tables)} block_tables; need B+1, B, B")
    device = meta.slot_mapping.device
    decodes = [i for i in range(len(ctx)) if qsl[i + 1] - qsl[i] == 1]
    decode_plans = []
    for group in decode_groups([ctx[i] + 1 for i in decodes], meta.config.decode_group_ratio):
        # in batch order: a group's rows attend apart, so order is free, and a pure decode step in one group
        # then needs no row selection (what its compiled graph takes, decode_metadata) whatever its lengths' order
        bucket = sorted(decodes[j] for j in group)
        lens = [ctx[i] + 1 for i in bucket]
        slots = _slots([tables[i] for i in bucket], lens, meta.block_size, device)
        # keys past a row's own position are its padding
        mask = _visible(torch.tensor(lens)[:, None] - 1, torch.arange(max(lens))[None, :], window)
        every_row = bucket == list(range(len(ctx)))  # a pure decode step in one group: no row selection
        decode_plans.append(_DecodePlan(
            token_idx=None if every_row else
            torch.tensor([qsl[i] for i in bucket], dtype=torch.long).to(device, non_blocking=True),
            key_slots=slots,
            key_mask=mask[:, None, None, :].to(device, non_blocking=True),
        ))
    prefills = []
    for i in range(len(ctx)):
        n = qsl[i + 1] - qsl[i]
        if n <= 1:
            continue
        slots = _slots([tables[i]], [ctx[i] + n], meta.block_size, device)[0] if ctx[i] else None
        prefills.append(_PrefillPlan(qsl[i], qsl[i + 1], slots, ctx[i], window, device))
    return decode_plans, prefills


class PagedAttention:
    """Attention of a flat batch against a paged KV cache; one per model (it holds no weights)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, sliding_window: int | None = None):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) is not a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.group = num_heads // num_kv_heads
        self.sliding_window = sliding_window
        self._gather_buffers: list[torch.Tensor | None] = [None, None]  # decode keys, values: see _gather

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache,
                meta: AttentionMetadata | DecodeMetadata | FlexDecodeMetadata, scale: float) -> torch.Tensor:
        """Write k/v [T, kv_heads, head_dim] at meta.slot_mapping, then attend q [T, heads, head_dim].

        Returns [T, heads, head_dim]. Each sequence's new queries see all its cached keys up to
        their own position (context_lens[i] + j).
        """
        k_cache = kv_cache[0].view(-1, self.num_kv_heads, self.head_dim)
        v_cache = kv_cache[1].view(-1, self.num_kv_heads, self.head_dim)
        k_cache.index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
        v_cache.index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))

        if isinstance(meta, FlexDecodeMetadata):
            return flex_paged_attention(q, k_cache, v_cache, meta.plan, scale)
        if isinstance(meta, AttentionMetadata) and meta.config.batch_invariant:
            return per_token_attention(q, k_cache, v_cache, _sequence_slots(meta), meta.query_start_loc,
                                       meta.context_lens, self.sliding_window, scale)
        if isinstance(meta, AttentionMetadata) and meta.config.backend == "flex":
            return self._flex(q, k, v, k_cache, v_cache, meta, kv_cache[0].shape[0], scale)
        if isinstance(meta, AttentionMetadata):
            meta = decode_metadata(meta, self.sliding_window) or meta
        if isinstance(meta, DecodeMetadata):  # a pure decode step: no row selection
            return self._decode(q, k_cache, v_cache, meta.key_slots, meta.key_mask, scale, meta.in_place)
        decodes, prefills = _plans(meta, self.sliding_window)
        in_place = meta.config.backend == "cpp"
        out = torch.empty_like(q)
        for d in decodes:
            rows = q.index_select(0, d.token_idx)
            out.index_copy_(0, d.token_idx,
                            self._decode(rows, k_cache, v_cache, d.key_slots, d.key_mask, scale, in_place))
        in_place_prefill = in_place and prefill_in_place(self.head_dim)
        for p in prefills:
            if in_place_prefill:  # the chunk's own K/V are in the pool already: its slots end the key slots
                slots = meta.slot_mapping[p.start:p.end] if p.key_slots is None else p.key_slots
                out[p.start:p.end] = paged_prefill(q[p.start:p.end], k_cache, v_cache, slots, p.context,
                                                   self.sliding_window, scale)
                continue
            if p.key_slots is None:
                keys, values = k[p.start:p.end], v[p.start:p.end]
            else:
                keys, values = k_cache.index_select(0, p.key_slots), v_cache.index_select(0, p.key_slots)
            out[p.start:p.end] = self._prefill(q[p.start:p.end], keys.to(q.dtype), values.to(q.dtype), p.mask, scale)
        return out

    __call__ = forward

    def _flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              meta: AttentionMetadata, num_pool_blocks: int, scale: float) -> torch.Tensor:
        """Rows on cached keys in one in-place FlexAttention call; fresh prompt chunks on their own k/v."""
        plan, fresh = _flex_plans(meta, self.sliding_window, num_pool_blocks)
        if plan is not None and plan.rows is None:
            return flex_paged_attention(q, k_cache, v_cache, plan, scale)
        out = torch.empty_like(q)
        if plan is not None:
            rows = flex_paged_attention(q.index_select(0, plan.rows), k_cache, v_cache, plan, scale)
            out.index_copy_(0, plan.rows, rows)
        for p in fresh:
            out[p.start:p.end] = self._prefill(q[p.start:p.end], k[p.start:p.end], v[p.start:p.end], p.mask, scale)
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_slots: torch.Tensor,
                key_mask: torch.Tensor, scale: float, in_place: bool = False) -> torch.Tensor:
        """q [D, heads, head_dim]: one query per row against its keys at key_slots [D, L]; `in_place`: through
        the cpp backend's kernel, else gathered into padded copies for SDPA (its reference)."""
        if in_place:
            return paged_decode(q, k_cache, v_cache, key_slots, key_mask, scale)
        d, length = key_slots.shape
        flat = key_slots.reshape(-1)
        # [D, L, kvh, hd] -> [D, kvh, L, hd]; the group's query heads act as G query rows per KV head.
        keys = self._gather(k_cache, flat, 0).view(d, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        values = self._gather(v_cache, flat, 1).view(d, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        queries = q.reshape(d, self.num_kv_heads, self.group, self.head_dim)
        out = _sdpa(queries, keys.to(q.dtype), values.to(q.dtype), key_mask, scale)
        return out.reshape(d, self.num_heads, self.head_dim)

    def _gather(self, cache: torch.Tensor, slots: torch.Tensor, which: int) -> torch.Tensor:
        """cache[slots]; on a CPU, eagerly, copied into a buffer this backend reuses (`which`: 0 keys, 1 values).

        A fresh tensor as large as a big decode group's K/V (64 rows x 2k keys of SmolLM2: 100 MB a layer) is
        mapped and page-faulted anew on every call, which cost 7x the copy itself on a CPU. Eager calls run in
        order, so a buffer is free again once the call that filled it has attended. CUDA's caching allocator
        already reuses memory, and a compiled graph plans its own buffers.
        """
        if cache.is_cuda or torch.compiler.is_compiling():
            return cache.index_select(0, slots)
        shape = (slots.numel(), *cache.shape[1:])
        size = shape[0] * cache[0].numel()
        buffer = self._gather_buffers[which]
        if buffer is None or buffer.numel() < size or buffer.dtype != cache.dtype:
            # keys grow by a row's worth each step: a quarter of headroom spares most reallocations
            buffer = self._gather_buffers[which] = torch.empty(size + size // 4, dtype=cache.dtype)
        return torch.index_select(cache, 0, slots, out=buffer[:size].view(shape))

    def _prefill(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 mask: torch.Tensor, scale: float) -> torch.Tensor:
        n, s = q.shape[0], keys.shape[0]
        # Batch dims (kvh, G): each KV head is broadcast (stride 0, no copy) to its G query heads, so the
        # [n, S] mask is shared too. On CPU this beats folding G into the rows ~3x for long chunks.
        queries = q.view(n, self.num_kv_heads, self.group, self.head_dim).permute(1, 2, 0, 3)
        shape = (self.num_kv_heads, self.group, s, self.head_dim)
        keys = keys.transpose(0, 1)[:, None].expand(shape)
        values = values.transpose(0, 1)[:, None].expand(shape)
        out = _sdpa(queries, keys, values, mask, scale)
        return out.permute(2, 0, 1, 3).reshape(n, self.num_heads, self.head_dim)


def allocate_kv_cache(config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device | str) -> list[KVCache]:
    """One zeroed (K, V) pair per layer, each [num_blocks, block_size, kv_heads, head_dim]."""
    shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return [(zeroed(shape, dtype, device), zeroed(shape, dtype, device)) for _ in range(config.num_layers)]


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zero tensor; on a CPU, in memory the OS maps in already zeroed (numpy's calloc), so a pool costs nothing
    until its blocks are written: `torch.zeros` writes every byte first (1.6 s for `tiny`'s default 2-core pool).
    Zeros, not garbage: a padded key's value is multiplied by a zero weight, and NaN bits would poison the row."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(math.prod(shape) * dtype.itemsize, dtype=np.uint8)).view(dtype).view(shape)

"""Batch-invariant numerics (deterministic=True): a row's result never depends on the rows computed beside it.

A float sum's value depends on its order, and kernels choose their order by
shape: oneDNN reduces a one-row GEMM (a GEMV) differently from a 2-row one
with K = 8192 (measured), and the attention backend pads decode rows to their
group's longest context and runs a prompt chunk's queries as one causal call.
So in bfloat16 the same request's tokens changed with its batch-mates and
with how its prompt was chunked (10 of 20 real prompts, issue 15).

Here every kernel sees shapes that depend on the row alone, as vLLM's
VLLM_BATCH_INVARIANT and SGLang's --enable-deterministic-inference do with
fixed-tile kernels:
- linear layers run in tiles of exactly GEMM_TILE_ROWS rows, the last one
  zero-padded, so every call has the same shape (row results do not depend on
  a row's place in its tile: each row's K loop is the same);
- attention runs one call per query token over exactly its visible keys,
  in the same layout for a prompt token and a decode token.
Norms, RoPE and activations are row-wise already. The cost is measured in
bench/bench_quant.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .linear import PackedLinear
from .quantization import Int4Linear, Int8Linear

if TYPE_CHECKING:
    from .llama import CausalLM  # llama imports attention, which imports this module

GEMM_TILE_ROWS = 8
"""Rows per GEMM call: small enough that a one-row decode costs about what the memory-bound GEMV does."""
_LINEAR_TYPES = (nn.Linear, PackedLinear, Int8Linear, Int4Linear)


class RowTiledLinear(nn.Module):
    """A linear layer run GEMM_TILE_ROWS rows at a time, so each row's sum order is the same in every batch."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        padded = F.pad(x, (0, 0, 0, -rows % GEMM_TILE_ROWS))
        return torch.cat([self.linear(tile) for tile in padded.split(GEMM_TILE_ROWS)])[:rows]


def make_batch_invariant(net: CausalLM) -> None:
    """Run every linear layer of `net` (the LM head included) in fixed row tiles."""
    if net.lm_head is None:  # a tied head: give it a module that shares the embedding table
        net.lm_head = nn.Linear(net.config.hidden_size, net.config.vocab_size, bias=False, device="meta")
        net.lm_head.weight = net.model.embed_tokens.weight
    _tile_linears(net)


def _tile_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _LINEAR_TYPES):
            setattr(module, name, RowTiledLinear(child))
        else:
            _tile_linears(child)


def per_token_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_slots: list[torch.Tensor],
                        starts: list[int], context_lens: list[int], window: int | None, scale: float) -> torch.Tensor:
    """Attention of each query token over exactly its visible keys, one call per token.

    q [T, heads, head_dim]; sequence i's new tokens are q[starts[i]:starts[i + 1]] at positions
    context_lens[i].., and seq_slots[i] are the cache slots of its keys 0..(last position).
    """
    num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // num_kv_heads
    out = torch.empty_like(q)
    for i, slots in enumerate(seq_slots):
        # [S, kvh, hd] -> [1, kvh, S, hd]; a row's slice keeps these strides whatever S is
        keys = k_cache.index_select(0, slots).to(q.dtype).transpose(0, 1)[None]
        values = v_cache.index_select(0, slots).to(q.dtype).transpose(0, 1)[None]
        for t in range(starts[i], starts[i + 1]):
            pos = context_lens[i] + t - starts[i]
            first = 0 if window is None else max(0, pos - window + 1)
            query = q[t].view(1, num_kv_heads, group, head_dim)
            out[t] = F.scaled_dot_product_attention(query, keys[:, :, first:pos + 1], values[:, :, first:pos + 1],
                                                    scale=scale).reshape(-1, head_dim)
    return out

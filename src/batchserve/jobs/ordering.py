"""Prefix-aware ordering: run requests that share a prompt prefix back to back (BatchLLM, RadixAttention).

Within a window of requests, sorting prompts by token ids puts every group
that shares a prefix next to each other, so the shared blocks are computed
once and stay in the prefix cache while the group runs. O(n log n) per window;
the window bounds how many prompts are held in memory.

Each request also gets an *anchor*: the earliest request of its run that
already holds its longest shared (full-block) prefix. A runner holds a
request back until its anchor's prompt is computed, because requests admitted
in the same step would otherwise all compute the shared prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .batch_io import BadLine, BatchRequest, Entry


def prefix_order(entries: Iterable[Entry], window: int, block_size: int) -> Iterator[Entry]:
    """Entries regrouped by shared prefix within each window of `window` requests; bad lines pass at once."""
    if window < 1:
        raise ValueError(f"the ordering window must be >= 1 request, got {window}")
    buf: list[BatchRequest] = []
    for entry in entries:
        if isinstance(entry, BadLine):
            yield entry
            continue
        buf.append(entry)
        if len(buf) >= window:
            yield from _order_window(buf, block_size)
            buf = []
    yield from _order_window(buf, block_size)


def _adapter_id(req: BatchRequest) -> int:
    return 0 if req.lora_request is None else req.lora_request.lora_int_id


def _order_window(reqs: list[BatchRequest], block_size: int) -> list[BatchRequest]:
    # by adapter first: KV blocks are only shared under one adapter. Stable: identical prompts keep input order
    reqs = sorted(reqs, key=lambda r: (_adapter_id(r), r.prompt_token_ids))
    # stack of (shared blocks with predecessor, index), strictly increasing in shared blocks:
    # the top entry with fewer shared blocks than k starts the run that holds k's prefix.
    stack: list[tuple[int, int]] = [(-1, 0)]
    for k in range(1, len(reqs)):
        same_adapter = _adapter_id(reqs[k - 1]) == _adapter_id(reqs[k])
        shared = shared_blocks(reqs[k - 1].prompt_token_ids, reqs[k].prompt_token_ids, block_size) if same_adapter else 0
        while stack[-1][0] >= shared:
            stack.pop()
        if shared > 0:
            reqs[k].anchor = reqs[stack[-1][1]].custom_id
        stack.append((shared, k))
    return reqs


def shared_blocks(a: list[int], b: list[int], block_size: int) -> int:
    """Full KV blocks two prompts share: a request can reuse at most len - 1 tokens of cached prefix."""
    limit = min(len(a), len(b)) - 1
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n // block_size

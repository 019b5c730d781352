"""Apply a grammar's token bitmask to logits: the one torch op structured output needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BITS = torch.arange(32, dtype=torch.int32)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """Set to -inf, in place, the logits of `rows` whose bit in `bitmask` [len(rows), ceil(V/32)] is 0.

    Other rows are untouched. Ids past the bitmask's 32 * words (never in a vocabulary it covers)
    are forbidden too. Plain tensor ops: llguidance's own kernel needs torch.compile.
    """
    vocab = logits.shape[1]
    bitmask = bitmask.to(logits.device)
    bits = _BITS.to(logits.device)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    idx = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
    logits[idx] = logits[idx].masked_fill(~allowed[:, :vocab], -float("inf"))

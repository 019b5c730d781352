"""Apply a grammar's token bitmask to logits: the one torch op structured output needs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def apply_token_bitmask(logits: torch.Tensor, bitmask: np.ndarray, rows: Sequence[int]) -> None:
    """Set to -inf, in place, the logits of `rows` whose bit in `bitmask` [len(rows), ceil(V/32)] is 0.

    Bit `t % 32` of int32 word `t // 32` stands for token t (llguidance's layout); other rows are
    untouched, and ids past the bitmask's 32 * words are forbidden. Unpacked with numpy, which is
    ~15x faster on CPU than shifting int32 words in torch (llguidance's own kernel needs torch.compile).
    """
    vocab = logits.shape[1]
    # Little-endian int32 words as bytes, each byte's bits low first: bit k is token k.
    allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, count=min(vocab, 32 * bitmask.shape[1]), bitorder="little")
    forbidden = torch.from_numpy(allowed).view(torch.bool).logical_not_()
    if forbidden.shape[1] < vocab:
        forbidden = torch.nn.functional.pad(forbidden, (0, vocab - forbidden.shape[1]), value=True)
    forbidden = forbidden.to(logits.device)
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(forbidden, -float("inf"))
        return
    idx = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
    logits[idx] = logits[idx].masked_fill_(forbidden, -float("inf"))

"""The bitmask op: -inf exactly where a constrained row's bit is 0, other rows untouched."""

from __future__ import annotations

import numpy as np
import torch

from batchserve.structured_output.bitmask import apply_token_bitmask


def bitmask_of(allowed: list[set[int]], vocab: int) -> np.ndarray:
    words = np.zeros((len(allowed), (vocab + 31) // 32), dtype=np.uint32)
    for row, ids in enumerate(allowed):
        for t in ids:
            words[row, t // 32] |= np.uint32(1 << (t % 32))
    return words.view(np.int32)  # bit 31 is the sign bit, as llguidance writes it


def test_masks_only_the_constrained_rows() -> None:
    vocab = 70  # three words, the last one partly past the vocabulary
    logits = torch.randn(3, vocab)
    before = logits.clone()
    allowed = [{0, 31, 69}, {32, 63}]
    apply_token_bitmask(logits, bitmask_of(allowed, vocab), rows=[0, 2])
    assert torch.equal(logits[1], before[1])
    for row, ids in zip([0, 2], allowed):
        finite = set(torch.isfinite(logits[row]).nonzero().flatten().tolist())
        assert finite == ids
        assert torch.equal(logits[row, sorted(ids)], before[row, sorted(ids)])


def test_all_rows_constrained_and_ids_past_the_bitmask() -> None:
    logits = torch.zeros(2, 40)
    apply_token_bitmask(logits, bitmask_of([{1}, {2, 31}], 32), rows=[0, 1])  # one word for 40 logits
    assert [torch.isfinite(row).nonzero().flatten().tolist() for row in logits] == [[1], [2, 31]]

"""Draft-model proposals: a smaller model with the target's vocabulary guesses k tokens greedily.

The draft keeps its own paged KV cache and block pool, one block table per request. Each step it
first catches up on the tokens it has not seen (the accepted drafts and the target's next token; KV
it computed for rejected drafts is dropped by rolling its computed length back to the longest prefix
it shares with the request), then runs k - 1 batched single-token steps. Drafts are the draft
model's argmax, so they are deterministic and the verifier's one-hot rejection rule stays exact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..attention_layout import AttentionConfig
from ..core.block_pool import BlockPool
from ..model_config import ModelConfig
from ..models.attention import AttentionMetadata, allocate_kv_cache
from ..models.llama import CausalLM
from ..request import Request
from ..tokenizer import Tokenizer


@dataclass
class _DraftSequence:
    """What the draft model holds for one request: the tokens whose KV it computed, and their blocks."""

    computed: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DraftForward:
    """One measured forward step of the draft model: per row, the tokens it held and the new ones it took."""

    contexts: list[int]
    fed: list[int]
    seconds: float


def check_draft_vocab(target: ModelConfig, draft: ModelConfig, draft_name: str) -> None:
    """Refuse a draft whose token ids mean something else than the target's."""
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"draft model {draft_name!r} has a vocabulary of {draft.vocab_size} tokens, the target "
                         f"{target.vocab_size}; a draft model must share the target's tokenizer and vocabulary")
    if tuple(draft.eos_token_ids) != tuple(target.eos_token_ids):
        raise ValueError(f"draft model {draft_name!r} ends text with token(s) {list(draft.eos_token_ids)}, the "
                         f"target with {list(target.eos_token_ids)}; a draft model must share the target's tokenizer")


TOKENIZER_PROBE = "Hello, world! Speculative decoding 123 -- ünïcödé, 日本語."
"""Text both tokenizers must split into the same ids."""


def check_draft_tokenizer(target: Tokenizer, draft: Tokenizer, draft_name: str) -> None:
    if target.encode(TOKENIZER_PROBE) != draft.encode(TOKENIZER_PROBE):
        raise ValueError(f"draft model {draft_name!r} tokenizes text differently from the target; a draft model "
                         "must share the target's tokenizer and vocabulary")


class DraftModelProposer:
    def __init__(self, model: CausalLM, config: ModelConfig, num_blocks: int, block_size: int,
                 device: torch.device, attention: AttentionConfig) -> None:
        self.model = model
        self.config = config  # its shape, for the simulated twin's cost of drafting
        self.block_size = block_size
        self.device = device
        self.attention = attention
        self.kv_caches = allocate_kv_cache(config, num_blocks, block_size, model.dtype, device)
        self.pool = BlockPool(num_blocks)
        self._sequences: dict[Request, _DraftSequence] = {}
        self.forward_log: list[DraftForward] | None = None
        """`calibrate` sets a list to have each forward step recorded (its shape and seconds); None: not recorded."""

    @torch.inference_mode()
    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in requests]
        active: list[int] = []  # requests that got blocks for this step's draft positions
        feeds: list[list[int]] = []
        for i, (req, n) in enumerate(zip(requests, k)):
            seq = self._sequences.setdefault(req, _DraftSequence())
            tokens = req.tokens(0, req.num_tokens)
            keep = _common_prefix(seq.computed, tokens, len(tokens) - 1)  # the last token is always fed
            del seq.computed[keep:]
            if n > 0 and self._fit(seq, len(tokens) + n - 1):
                active.append(i)
                feeds.append(tokens[keep:])
        step = feeds
        while active:
            seqs = [self._sequences[requests[i]] for i in active]
            next_tokens = self._forward(seqs, step)
            still: list[int] = []
            for i, seq, fed, token in zip(active, seqs, step, next_tokens):
                seq.computed += fed
                drafts[i].append(token)
                if len(drafts[i]) < k[i]:
                    still.append(i)
            step = [[drafts[i][-1]] for i in still]
            active = still
        return drafts

    def _forward(self, seqs: list[_DraftSequence], feeds: list[list[int]]) -> list[int]:
        """Run the draft over each sequence's new tokens; the argmax after each one's last token."""
        start = time.perf_counter()
        positions, meta = AttentionMetadata.of_rows([seq.block_ids for seq in seqs], [len(seq.computed) for seq in seqs],
                                                    [len(fed) for fed in feeds], self.block_size, self.device,
                                                    self.attention)
        ids = [token for fed in feeds for token in fed]
        hidden = self.model(torch.tensor(ids, dtype=torch.long, device=self.device), positions, self.kv_caches, meta)
        last = [q - 1 for q in meta.query_start_loc[1:]]
        tokens = self.model.compute_logits(hidden[last]).argmax(dim=-1).tolist()  # the host read waits for the device
        if self.forward_log is not None:
            self.forward_log.append(DraftForward([len(seq.computed) for seq in seqs], [len(fed) for fed in feeds],
                                                 time.perf_counter() - start))
        return tokens

    def _fit(self, seq: _DraftSequence, num_tokens: int) -> bool:
        """Size the sequence's blocks to `num_tokens` positions; False (nothing taken) if the pool is short."""
        keep = -(-len(seq.computed) // self.block_size)
        if len(seq.block_ids) > keep:
            self.pool.free(reversed(seq.block_ids[keep:]))
            del seq.block_ids[keep:]
        need = -(-num_tokens // self.block_size) - len(seq.block_ids)
        if need > self.pool.num_free_blocks:
            return False
        seq.block_ids += self.pool.allocate(need)
        return True

    def release(self, request: Request) -> None:
        seq = self._sequences.pop(request, None)
        if seq is not None:
            self.pool.free(reversed(seq.block_ids))


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n

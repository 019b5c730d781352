"""Our tokenizers as llguidance sees them: every token's bytes, so a grammar over text can become a token mask."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import llguidance

from ..tokenizer import ByteTokenizer, Tokenizer


class _ByteTokens:
    """The byte tokenizer as llguidance's custom token list: 256 byte tokens, then the specials by name."""

    def __init__(self, tokenizer: ByteTokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        names = tokenizer.SPECIAL_TOKENS
        self.tokens = [bytes([i]) for i in range(256)] + [names.get(i, f"<|{i}|>").encode() for i in range(256, vocab_size)]
        self.eos_token_id = eos_token_ids[0]
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = list(range(256, vocab_size))

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


def ll_tokenizer(tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> llguidance.LLTokenizer:
    """An llguidance tokenizer over the model's `vocab_size` logits; EOS ends a complete output.

    Hugging Face tokenizers go over whole (their tokenizer.json), so llguidance sees the real
    byte-level / sentencepiece pieces; the byte tokenizer is a custom token list. Built once per
    engine: about 0.3 s for a 49k vocabulary.
    """
    if not eos_token_ids:
        raise ValueError("structured outputs need the model's EOS token id, to end a complete output")
    if isinstance(tokenizer, ByteTokenizer):
        wrapper = llguidance.TokenizerWrapper(_ByteTokens(tokenizer, vocab_size, eos_token_ids))
        return llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=list(eos_token_ids))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"structured outputs need a byte or Hugging Face fast tokenizer, got {type(tokenizer).__name__}")
    backend = copy.copy(backend)  # padding and truncation would change what llguidance reads
    backend.no_padding()
    backend.no_truncation()
    return llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_token_ids))

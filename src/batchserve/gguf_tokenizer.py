"""The tokenizer a GGUF file describes, rebuilt as a `tokenizers`-library tokenizer.

A GGUF has no tokenizer.json: it stores the vocabulary, merges, token types,
special token ids and chat template as `tokenizer.*` metadata. The "gpt2"
model (byte-level BPE, used by SmolLM2, Llama 3, Qwen2) is rebuilt here with
the pre-tokenizer split its `tokenizer.ggml.pre` names; the result behaves as
transformers' own GGUF tokenizer does.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .gguf_file import GGUFError, GGUFFile, open_gguf
from .tokenizer import HFTokenizer

# llama.cpp token types (tokenizer.ggml.token_type)
_CONTROL, _USER_DEFINED = 3, 4
# tokenizer.ggml.pre -> the split regex its merges were learned with; others use GPT-2's (ByteLevel's own)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZER_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
SUPPORTED_TOKENIZER_MODELS = ("gpt2",)


def gguf_tokenizer(path: str | os.PathLike) -> HFTokenizer:
    """The tokenizer, special tokens, BOS/EOS and chat template of a GGUF file."""
    file = open_gguf(path)
    kind = file.get("tokenizer.ggml.model")
    if kind not in SUPPORTED_TOKENIZER_MODELS:
        raise GGUFError(f"{file.path}: tokenizer model {kind!r} (tokenizer.ggml.model) is not supported; "
                        f"supported: {', '.join(SUPPORTED_TOKENIZER_MODELS)}")
    tokens: list[str] = file.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise GGUFError(f"{file.path} has no vocabulary (tokenizer.ggml.tokens)")
    fast = _byte_level_bpe(file, tokens)

    def token(key: str) -> str | None:
        token_id = file.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    config = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
              "add_bos_token": file.get("tokenizer.ggml.add_bos_token")}
    return HFTokenizer(fast, config, file.path, file.get("tokenizer.chat_template"))


def _byte_level_bpe(file: GGUFFile, tokens: list[str]) -> Any:
    """GPT-2-style BPE over the byte alphabet, with the file's control and user-defined tokens kept whole."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    # a token spelled outside the byte alphabet (a mislabelled one) is respelled byte by byte, as the BPE sees it
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges") or []]
    fast = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    split = _PRE_TOKENIZER_SPLITS.get(file.get("tokenizer.ggml.pre"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    fast.pre_tokenizer = byte_level if split is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])
    fast.decoder = decoders.ByteLevel()
    types = file.get("tokenizer.ggml.token_type") or []
    # a control token outside the byte alphabet would add an id past the model's vocabulary: skipped
    fast.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                             if kind == _CONTROL and set(t) <= alphabet])
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types)
                     if kind == _USER_DEFINED and t in vocab])
    return fast


@functools.cache
def _byte_spelling() -> dict[int, str]:
    """GPT-2's printable spelling of each byte: printable Latin-1 as itself, the rest shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shift)
            shift += 1
    return spelling


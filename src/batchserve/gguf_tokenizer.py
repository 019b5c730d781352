"""The tokenizer a GGUF file describes, rebuilt as a `tokenizers`-library tokenizer.

A GGUF has no tokenizer.json: it stores the vocabulary, merges, token types,
special token ids and chat template as `tokenizer.*` metadata. Two models are
rebuilt, each behaving as transformers' own GGUF tokenizer does:

- "gpt2": byte-level BPE (SmolLM2, Llama 3, Qwen2), with the pre-tokenizer
  split its `tokenizer.ggml.pre` names;
- "llama": SentencePiece BPE with byte fallback (Llama 2, Mistral), whose
  merges follow from the token scores when the file lists none.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .gguf_file import GGUFError, GGUFFile, open_gguf
from .tokenizer import HFTokenizer

# llama.cpp token types (tokenizer.ggml.token_type)
_CONTROL, _USER_DEFINED = 3, 4
_SPACE = "\u2581"  # SentencePiece's visible space
# tokenizer.ggml.pre -> the split regex its merges were learned with; others use GPT-2's (ByteLevel's own)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZER_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")


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
    fast = _byte_level_bpe(file, tokens) if kind == "gpt2" else _sentencepiece_bpe(file, tokens)
    _add_marked_tokens(fast, tokens, file.get("tokenizer.ggml.token_type") or [], byte_level=kind == "gpt2")

    def token(key: str) -> str | None:
        token_id = file.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise
    add_bos = file.get("tokenizer.ggml.add_bos_token", True if kind == "llama" else None)
    config = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"), "add_bos_token": add_bos}
    return HFTokenizer(fast, config, file.path, file.get("tokenizer.chat_template"))


def _byte_level_bpe(file: GGUFFile, tokens: list[str]) -> Any:
    """GPT-2-style BPE over the byte alphabet."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
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
    return fast


def _sentencepiece_bpe(file: GGUFFile, tokens: list[str]) -> Any:
    """SentencePiece BPE: spaces as U+2581, a space before the first word, unknown bytes as <0xNN> tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in file:
        merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges")]
    else:
        merges = merges_from_scores(tokens, file.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    unk = file.get("tokenizer.ggml.unknown_token_id")
    fast = Tokenizer(BPE(vocab, merges, unk_token=tokens[unk] if unk is not None else None, fuse_unk=True,
                         byte_fallback=True))
    prefix_space = file.get("tokenizer.ggml.add_space_prefix", True)
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first" if prefix_space else
                                                  "never", split=False)
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    fast.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix_space else []))
    return fast


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece BPE vocabulary implies: every split of a token into two tokens, best score first.

    Ties go to the longer left part, then the longer right part, then vocabulary order (transformers' order).
    """
    ids = {t: i for i, t in enumerate(tokens)}
    candidates = []
    for token, score in zip(tokens, scores):
        pairs = sorted(((token[:cut], token[cut:]) for cut in range(1, len(token))
                        if token[:cut] in ids and token[cut:] in ids), key=lambda p: (ids[p[0]], ids[p[1]]))
        candidates += [(score, left, right) for left, right in pairs]
    # a stable sort on the negated key keeps vocabulary order among equals
    candidates.sort(key=lambda c: (-c[0], -len(c[1]), -len(c[2])))
    return [(left, right) for _, left, right in candidates]


def _add_marked_tokens(fast: Any, tokens: list[str], types: list[int], byte_level: bool) -> None:
    """The file's control tokens as special tokens and user-defined ones as added tokens, so both stay whole."""
    from tokenizers import AddedToken

    # in a byte-level vocabulary a control token spelled outside the byte alphabet is a mislabel that would
    # add an id past the model's vocabulary: skipped
    alphabet = set(_byte_spelling().values()) if byte_level else None
    fast.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                             if kind == _CONTROL and (alphabet is None or set(t) <= alphabet)])
    vocab = fast.get_vocab()
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types)
                     if kind == _USER_DEFINED and t in vocab])


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


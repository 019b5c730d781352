"""llguidance's view of our tokenizers: the same bytes per token, EOS allowed only where the grammar is complete."""

from __future__ import annotations

from pathlib import Path

import llguidance
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, pre_tokenizers

from batchserve.request import StructuredOutputsParams
from batchserve.structured_output import GrammarCompiler, ll_tokenizer
from batchserve.tokenizer import ByteTokenizer, HFTokenizer


def allowed(matcher: llguidance.LLMatcher, vocab: int) -> set[int]:
    mask = matcher.compute_bitmask()
    return {t for t in range(vocab) if mask[t // 8] >> (t % 8) & 1}


def test_byte_tokenizer_tokens_are_bytes_and_specials() -> None:
    tok = ll_tokenizer(ByteTokenizer(), 259, [ByteTokenizer.EOS])
    assert tok.vocab_size == 259 and tok.eos_tokens == [ByteTokenizer.EOS]
    assert tok.decode_bytes(list(b"h\xc3\xa9")) == "hé".encode()
    assert all(tok.is_special_token(t) for t in (256, 257, 258)) and not tok.is_special_token(ord("<"))
    matcher = llguidance.LLMatcher(tok, llguidance.grammar_from("regex", "[0-9]+"))
    assert allowed(matcher, 259) == set(b"0123456789")  # nothing yet: EOS not allowed
    assert matcher.consume_token(ord("7"))
    assert allowed(matcher, 259) == set(b"0123456789") | {ByteTokenizer.EOS}


def test_hf_tokenizer_is_read_whole(tmp_path: Path) -> None:
    """A byte-level BPE with merged pieces: a multi-byte token is allowed where all its bytes fit."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(sorted(alphabet))}}
    merges = [("y", "e"), ("ye", "s")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    fast = FastTokenizer(models.BPE(vocab=vocab, merges=merges))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens(["<eos>"])
    fast.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<eos>"}')
    hf = HFTokenizer.from_directory(tmp_path)
    model_vocab = hf.vocab_size + 5  # a padded embedding: the extra ids are never allowed
    compiler = GrammarCompiler(ll_tokenizer(hf, model_vocab, [0]))
    matcher = compiler.compile(StructuredOutputsParams(choice=["yes", "no"])).deep_copy()
    first = allowed(matcher, model_vocab)
    assert {hf.encode("yes", add_special_tokens=False)[0], vocab["n"], vocab["y"], vocab["ye"]} <= first
    assert all(hf.decode([t]) and hf.decode([t])[0] in "yn" for t in first)
    assert matcher.consume_token(vocab["yes"]) and matcher.is_stopped()

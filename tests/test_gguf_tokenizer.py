"""The tokenizer rebuilt from a GGUF's metadata against transformers' GGUF tokenizer on the same file."""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")

from gguf_files import transformers_reads_gguf_quickly, write_gguf  # noqa: E402

from batchserve.gguf_file import GGUFError  # noqa: E402
from batchserve.tokenizer import HFTokenizer, chat_prompt_ids, load_tokenizer  # noqa: E402

TEXTS = ["Hello world 12345", "  leading spaces\n\nand\ttabs  ", "emoji 🤗 and 中文字符", "don't STOP—now!",
         "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>x<repo_name>", "élan café naïve", ""]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]


@pytest.fixture(scope="module")
def tokenizers(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    with transformers_reads_gguf_quickly():
        theirs = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    ours = load_tokenizer(smollm2_gguf)
    assert isinstance(ours, HFTokenizer)
    return ours, theirs


def test_texts_encode_and_decode_like_transformers(tokenizers):
    ours, theirs = tokenizers
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs(text).input_ids, text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)


def test_special_tokens_and_the_chat_template_come_from_the_file(tokenizers):
    ours, theirs = tokenizers
    assert (ours.bos_token_id, ours.eos_token_id) == (theirs.bos_token_id, theirs.eos_token_id) == (1, 2)
    assert ours.vocab_size == len(theirs) == 49152
    text = ours.apply_chat_template(CONVERSATION)
    assert text == theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert chat_prompt_ids(ours, CONVERSATION) == theirs.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, return_dict=True)["input_ids"]


def sentencepiece_vocab() -> list[tuple[str, float, int]]:
    """Llama-2-style: control tokens, the 256 byte-fallback tokens, then pieces scored as merges were learned."""
    control, normal, byte = 3, 1, 6
    vocab = [("<unk>", 0.0, 2), ("<s>", 0.0, control), ("</s>", 0.0, control)]
    vocab += [(f"<0x{b:02X}>", 0.0, byte) for b in range(256)]
    pieces = ["t", "h", "e", "l", "o", "r", "w", "d", "a", "n", "_t", "he", "_the", "ll", "_h", "llo", "_hello",
              "_w", "or", "_wor", "ld", "_world", "an", "_an", "_and", "er", "_he", "re", "_there", "ere", "_ther"]
    pieces = ["\u2581"] + [p.replace("_", "\u2581") for p in pieces]
    vocab += [(p, -float(i), normal) for i, p in enumerate(pieces)]
    return vocab


def test_a_sentencepiece_vocabulary_encodes_like_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_gguf(tmp_path / "spm.gguf", tokenizer_model="llama", vocab=sentencepiece_vocab())
    ours = load_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["the hello world", "hello there and the world", " leading and  double  spaces",
                 "unknown: Zürich 🤗\n", "the</s>world", ""]:
        ids = ours.encode(text)
        assert ids == theirs(text).input_ids, text
        assert ids[0] == 1  # llama.cpp adds BOS to a SentencePiece vocabulary by default
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text


def test_an_unsupported_tokenizer_model_is_named(tmp_path):
    path = write_gguf(tmp_path / "bert.gguf", tokenizer_model="bert")
    with pytest.raises(GGUFError, match="tokenizer model 'bert' .* is not supported; supported: gpt2, llama"):
        load_tokenizer(path)

"""The tokenizer rebuilt from a GGUF's metadata against transformers' GGUF tokenizer on the same file."""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")

from gguf_files import write_gguf  # noqa: E402

from batchserve.gguf_file import GGUFError  # noqa: E402
from batchserve.tokenizer import HFTokenizer, chat_prompt_ids, load_tokenizer  # noqa: E402

TEXTS = ["Hello world 12345", "  leading spaces\n\nand\ttabs  ", "emoji 🤗 and 中文字符", "don't STOP—now!",
         "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>x<repo_name>", "élan café naïve", ""]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]


@pytest.fixture(scope="module")
def tokenizers(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
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


def test_an_unsupported_tokenizer_model_is_named(tmp_path):
    path = write_gguf(tmp_path / "spm.gguf", tokenizer_model="bert")
    with pytest.raises(GGUFError, match="tokenizer model 'bert' .* is not supported; supported: gpt2"):
        load_tokenizer(path)

"""Tokenizers, chat templates, incremental detokenization and stop strings.

Real fast tokenizers are built in the test: a byte-level BPE trained on a few
sentences (GPT-2 style) and a hand-made byte-fallback BPE with sentencepiece
spaces (Llama-2 style). Both split emoji and CJK characters across tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from batchserve.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    IncrementalDetokenizer,
    StopChecker,
    Tokenizer,
    chat_prompt_ids,
    load_tokenizer,
)

CORPUS = [
    "Hello world, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "日本語のテキストと中文字符。",
    "Emoji time 😀🎉👍🏽 and café naïve résumé",
    "hello hello world world",
] * 3

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}\n"
    "  {% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role: ' + m['role']) }}"
    "{% endif %}\n"
    "<|{{ m['role'] }}|>\n{{ m['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "  be brief "}, {"role": "user", "content": "hi 😀"}]
RENDERED = "<s><|system|>\nbe brief</s>\n<|user|>\nhi 😀</s>\n<|assistant|>\n"

EOS_ADDED_TOKEN = {
    "__type": "AddedToken", "content": "</s>", "special": True,
    "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
}


def write_model_dir(path: Path, tok: FastTokenizer, **config: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": EOS_ADDED_TOKEN, "tokenizer_class": "PreTrainedTokenizerFast", **config}
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def byte_level_bpe() -> FastTokenizer:
    tok = FastTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def byte_fallback_bpe() -> FastTokenizer:
    """Llama-2 style: "▁" marks spaces, unknown characters fall back to <0xNN> byte tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    merges = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("▁he", "ll"), ("▁hell", "o"), ("▁", "w"), ("o", "r")]
    for piece in [*"▁abcdefghijklmnopqrstuvwxyzHTW,.!?é", *(a + b for a, b in merges)]:
        vocab.setdefault(piece, len(vocab))
    tok = FastTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="module")
def gpt2_style(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    path = write_model_dir(tmp_path_factory.mktemp("gpt2"), byte_level_bpe(), chat_template=CHAT_TEMPLATE)
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    return tok


@pytest.fixture(scope="module")
def llama_style(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    templates = [{"name": "tool_use", "template": "tools!"}, {"name": "default", "template": CHAT_TEMPLATE}]
    path = write_model_dir(tmp_path_factory.mktemp("llama"), byte_fallback_bpe(), chat_template=templates)
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    return tok


# --- loading ---


def test_load_tokenizer_reads_special_tokens_from_the_config(gpt2_style: HFTokenizer) -> None:
    assert isinstance(gpt2_style, Tokenizer)
    assert (gpt2_style.bos_token_id, gpt2_style.eos_token_id) == (0, 1)
    assert gpt2_style.vocab_size == 300
    assert gpt2_style.all_special_ids == {0, 1}
    assert gpt2_style.is_special(1) and not gpt2_style.is_special(2)
    ids = gpt2_style.encode("Hello 😀 中文")
    assert ids[0] == 0 and 0 not in gpt2_style.encode("Hello", add_special_tokens=False)
    assert gpt2_style.decode(ids) == "Hello 😀 中文"
    assert gpt2_style.decode(ids, skip_special_tokens=False) == "<s>Hello 😀 中文"


def test_load_tokenizer_tiny_is_the_byte_tokenizer() -> None:
    assert isinstance(load_tokenizer("tiny"), ByteTokenizer)


def test_missing_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*only fast tokenizers"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize("add_bos_token", [True, False])
def test_add_bos_token_overrides_the_post_processor(tmp_path: Path, add_bos_token: bool) -> None:
    tok = byte_level_bpe()
    if add_bos_token:
        tok.post_processor = processors.ByteLevel()  # a post-processor that adds no BOS
    plain = tok.encode("Hi", add_special_tokens=False).ids
    hf = load_tokenizer(write_model_dir(tmp_path, tok, add_bos_token=add_bos_token))
    assert hf.encode("Hi") == ([0] if add_bos_token else []) + plain
    assert hf.encode("Hi", add_special_tokens=False) == plain


# --- chat templates ---


def test_chat_template_renders_like_transformers(gpt2_style: HFTokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    assert gpt2_style.apply_chat_template(MESSAGES) == RENDERED
    theirs = PreTrainedTokenizerFast.from_pretrained(str(gpt2_style.path))
    for add in (True, False):
        expected = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add)
        assert gpt2_style.apply_chat_template(MESSAGES, add_generation_prompt=add) == expected


@pytest.mark.parametrize("style", ["gpt2_style", "llama_style"])
def test_chat_prompt_ids_hold_the_templates_bos_once(style: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(style)
    ids = chat_prompt_ids(tok, MESSAGES)
    assert ids == tok.encode(RENDERED, add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # the encoder adds no second BOS
    assert tok.encode(RENDERED).count(tok.bos_token_id) == 2  # which plain encoding would


def test_named_chat_templates_use_default(llama_style: HFTokenizer) -> None:
    assert llama_style.apply_chat_template(MESSAGES) == RENDERED


def test_chat_template_helpers(tmp_path: Path) -> None:
    template = "{{ raise_exception('no ' + messages[0]['role']) if messages[0]['role'] == 'tool' }}" \
        "{{ strftime_now('%Y') | length }} {{ messages | tojson }} {% generation %}g{% endgeneration %}"
    hf = load_tokenizer(write_model_dir(tmp_path, byte_level_bpe(), chat_template=template))
    assert hf.apply_chat_template([{"role": "user", "content": "é<"}]) == '4 [{"role": "user", "content": "é<"}] g'
    with pytest.raises(jinja2.TemplateError, match="no tool"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_is_sandboxed(tmp_path: Path) -> None:
    template = "{{ messages.__class__.__mro__ }}"
    hf = load_tokenizer(write_model_dir(tmp_path, byte_level_bpe(), chat_template=template))
    with pytest.raises(jinja2.exceptions.SecurityError):
        hf.apply_chat_template(MESSAGES)


def test_missing_chat_template_is_a_clear_error(tmp_path: Path) -> None:
    hf = load_tokenizer(write_model_dir(tmp_path, byte_level_bpe()))
    with pytest.raises(ValueError, match="has no chat template"):
        hf.apply_chat_template(MESSAGES)


def test_chat_template_jinja_file_is_found(tmp_path: Path) -> None:
    path = write_model_dir(tmp_path, byte_level_bpe())
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    assert load_tokenizer(path).apply_chat_template(MESSAGES) == RENDERED


# --- ByteTokenizer ---


@given(st.text())
def test_byte_tokenizer_round_trips(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[0] == ByteTokenizer.BOS
    assert tok.decode(ids) == text.replace("<|bos|>", "").replace("<|eos|>", "").replace("<|pad|>", "")
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=False) == text


def test_byte_tokenizer_specials_and_invalid_bytes() -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == 259 and (tok.bos_token_id, tok.eos_token_id) == (256, 257)
    assert tok.encode("é", add_special_tokens=False) == [0xC3, 0xA9]
    assert tok.decode([256, 104, 105, 257, 258]) == "hi"
    assert tok.decode([256, 104, 105, 257], skip_special_tokens=False) == "<|bos|>hi<|eos|>"
    assert tok.decode([0xF0, 0x9F, 104]) == "\ufffdh"
    assert tok.is_special(258) and not tok.is_special(255)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|bos|><|user|>\nhi\n<|assistant|>\n"
    assert tok.encode(prompt, add_special_tokens=False)[0] == ByteTokenizer.BOS


# --- incremental detokenization ---

PIECES = ["hello", " world", " the", " fox", "é", " café", "中", "文字", "日本語", "😀", "🎉", "👍🏽", " ", ",", "!", "\n"]
texts = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join)
chunk_sizes = st.lists(st.integers(1, 4), min_size=1, max_size=40)


def expected_output_text(tok: Tokenizer, prompt: list[int], output: list[int]) -> str:
    """The output as the continuation of the prompt (keeps a sentencepiece leading space)."""
    whole, prompt_text = tok.decode(prompt + output), tok.decode(prompt)
    assert whole.startswith(prompt_text)
    return whole[len(prompt_text):]


def check_stream(tok: Tokenizer, prompt_text: str, text: str, sizes: list[int]) -> None:
    prompt = tok.encode(prompt_text)
    output = tok.encode(text, add_special_tokens=False)
    expected = expected_output_text(tok, prompt, output)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas, pos, step = [], 0, 0
    while pos < len(output):
        new = output[pos : pos + sizes[step % len(sizes)]]
        pos, step = pos + len(new), step + 1
        delta = detok.add(new)
        deltas.append(delta)
        assert "\ufffd" not in delta  # never half a character
        assert expected.startswith(detok.text)
        so_far = tok.decode(prompt + output[:pos])
        if "\ufffd" not in so_far:  # at a character boundary everything is out
            assert detok.text == expected_output_text(tok, prompt, output[:pos])
    assert detok.flush() == ""
    assert "".join(deltas) == detok.text == expected
    assert detok.output_token_ids == output


@settings(max_examples=60, deadline=None)
@given(texts, chunk_sizes)
def test_detokenizer_byte_level_bpe_random_splits(gpt2_style: HFTokenizer, text: str, sizes: list[int]) -> None:
    check_stream(gpt2_style, "Hello there", text, sizes)
    assert IncrementalDetokenizer(gpt2_style, []).add(gpt2_style.encode(text, False)) == text


@settings(max_examples=60, deadline=None)
@given(texts, chunk_sizes)
def test_detokenizer_byte_fallback_random_splits(llama_style: HFTokenizer, text: str, sizes: list[int]) -> None:
    check_stream(llama_style, "hello", text, sizes)


@settings(max_examples=60, deadline=None)
@given(texts, chunk_sizes)
def test_detokenizer_byte_tokenizer_random_splits(text: str, sizes: list[int]) -> None:
    check_stream(ByteTokenizer(), "hi", text, sizes)


@pytest.mark.parametrize("name", ["gpt2_style", "llama_style"])
def test_emoji_split_across_tokens_is_held_until_complete(name: str, request: pytest.FixtureRequest) -> None:
    tok: HFTokenizer = request.getfixturevalue(name)
    ids = tok.encode("hello😀", add_special_tokens=False)
    emoji_tokens = len(ids) - len(tok.encode("hello", add_special_tokens=False))
    assert emoji_tokens >= 3  # the emoji really is split
    detok = IncrementalDetokenizer(tok, tok.encode("x"))
    detok.add(ids[:-emoji_tokens])
    assert [detok.add([i]) for i in ids[-emoji_tokens:]] == [""] * (emoji_tokens - 1) + ["😀"]


def test_sentencepiece_leading_space_comes_from_the_prompt_context(llama_style: HFTokenizer) -> None:
    prompt = llama_style.encode("hello")
    output = llama_style.encode("hello world", add_special_tokens=False)[1:]  # "▁w", "or", "l", "d"
    detok = IncrementalDetokenizer(llama_style, prompt)
    assert [detok.add([i]) for i in output] == [" w", "or", "l", "d"]
    # Without context the decoder strips the first space, as decode(output) does.
    assert IncrementalDetokenizer(llama_style, []).add(output) == llama_style.decode(output) == "world"


def test_flush_emits_an_incomplete_tail_as_decode_does(gpt2_style: HFTokenizer) -> None:
    ok = gpt2_style.encode("ok", add_special_tokens=False)
    ids = gpt2_style.encode("ok😀", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(gpt2_style, [0])
    assert detok.add(ok) == "ok"
    assert detok.add(ids[len(ok):]) == ""
    assert detok.flush() == "\ufffd"
    assert detok.text == gpt2_style.decode(ids) == "ok\ufffd"
    assert detok.flush() == ""


@pytest.mark.parametrize(("skip", "expected"), [(True, "hi"), (False, "hi</s>")])
def test_detokenizer_special_tokens(gpt2_style: HFTokenizer, skip: bool, expected: str) -> None:
    detok = IncrementalDetokenizer(gpt2_style, [0], skip_special_tokens=skip)
    detok.add(gpt2_style.encode("hi", add_special_tokens=False))
    detok.add([gpt2_style.eos_token_id])
    assert detok.text == expected


# --- stop strings ---


def stream_until_stop(checker: StopChecker, chunks: list[str]) -> tuple[str, list[str]]:
    """Feed text chunks as a detokenizer would; return the final output and what was streamed on the way."""
    text, streamed = "", []
    for chunk in chunks:
        text += chunk
        cut = checker.check(text, len(chunk))
        if cut is not None:
            return text[:cut], streamed
        streamed.append(text[: len(text) - checker.hold_back(text)])
    return text, streamed


@pytest.mark.parametrize(("include", "expected"), [(False, "Hello, world! "), (True, "Hello, world! STOP")])
def test_stop_string_spanning_chunks_truncates_exactly(include: bool, expected: str) -> None:
    checker = StopChecker(["STOP"], include_stop_str_in_output=include)
    output, _ = stream_until_stop(checker, ["Hel", "lo, wo", "rld! ST", "O", "P and more", " text"])
    assert output == expected


def test_stop_string_through_the_detokenizer(gpt2_style: HFTokenizer) -> None:
    ids = gpt2_style.encode("The fox 😀🎉 jumps", add_special_tokens=False)
    detok, checker = IncrementalDetokenizer(gpt2_style, [0]), StopChecker(["😀🎉"])
    for i in ids:
        cut = checker.check(detok.text, len(detok.add([i])))
        if cut is not None:
            break
    assert cut is not None and detok.text[:cut] == "The fox "


def test_only_matches_ending_in_new_text_count() -> None:
    checker = StopChecker(["STOP"], include_stop_str_in_output=False)
    assert checker.check("STOP here", 5) is None
    assert checker.check("xSTOP here", 7) == 1
    assert checker.check("STOP", 0) is None


def test_earliest_ending_stop_string_wins() -> None:
    checker = StopChecker(["abc", "b"])
    assert checker.matched is None
    assert checker.check("xabc", 4) == 2
    assert checker.matched == "b"
    assert StopChecker(["abc", "b"], include_stop_str_in_output=True).check("xabc", 4) == 3
    assert StopChecker(["bc", "abc"]).check("xabc", 4) == 1  # same end: the longer match is cut


def test_hold_back_is_the_longest_partial_stop_string() -> None:
    checker = StopChecker(["STOP", "\n\n"])
    assert [checker.hold_back(t) for t in ["Hello", "Hello S", "Hello ST", "Hello STO", "Hi\n", "ST"]] == [
        0, 1, 2, 3, 1, 2,
    ]
    assert StopChecker(["STOP"], include_stop_str_in_output=True).hold_back("Hello STO") == 0
    assert StopChecker([]).hold_back("anything") == 0


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abS😀", max_size=30),
    st.lists(st.text(alphabet="abS😀", min_size=1, max_size=3), min_size=1, max_size=3),
    st.lists(st.integers(1, 5), min_size=1, max_size=10),
    st.booleans(),
)
def test_streaming_stop_matches_whole_text_search(text: str, stops: list[str], sizes: list[int], include: bool) -> None:
    chunks, pos, step = [], 0, 0
    while pos < len(text):
        chunks.append(text[pos : pos + sizes[step % len(sizes)]])
        pos, step = pos + len(chunks[-1]), step + 1
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    end, start, matched = min(found, default=(len(text), len(text), None))
    expected = text[:end] if include else text[:start]
    checker = StopChecker(stops, include)
    output, streamed = stream_until_stop(checker, chunks)
    assert output == expected
    assert checker.matched == matched
    assert all(expected.startswith(s) for s in streamed)  # nothing streamed is ever taken back

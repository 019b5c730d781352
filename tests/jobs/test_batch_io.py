"""Input parsing, duplicate ids, and the output scan that makes resuming safe."""

from __future__ import annotations

import json

import pytest

from batchserve.jobs.batch_io import (
    OPENAI, PLAIN, BadLine, BatchRequest, ResultWriter, check_unique_ids, detect_format, read_entries, scan_output,
)
from batchserve.jobs.openai_format import derived_seed, job_context, prepare
from batchserve.jobs.runner import JobConfig
from batchserve.openai import ServingContext
from batchserve.request import SamplingParams
from batchserve.tokenizer import ByteTokenizer

from jobfiles import chat, completion, write_jsonl


def test_openai_lines_parse_and_bad_lines_say_what_is_wrong(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        completion("a", "hi"),
        "",
        "{not json",
        "[1, 2]",
        {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}},
        {"custom_id": 7, "url": "/v1/completions", "body": {}},
        {"custom_id": "c", "method": "GET", "url": "/v1/completions", "body": {}},
        chat("d", "hello"),
    ])
    assert detect_format(path) == OPENAI
    entries = list(read_entries(path, OPENAI))
    assert [e.line_no for e in entries] == [1, 3, 4, 5, 6, 7, 8]  # the blank line is skipped
    assert [e.seq for e in entries] == list(range(7))
    assert isinstance(entries[0], BatchRequest) and isinstance(entries[-1], BatchRequest)
    messages = [e.message for e in entries[1:-1]]
    assert all(isinstance(e, BadLine) for e in entries[1:-1])
    assert messages[0].startswith("line 3: not valid JSON")
    assert "expected a JSON object" in messages[1]
    assert "unsupported url '/v1/embeddings'" in messages[2] and entries[3].custom_id == "b"
    assert "custom_id must be a non-empty string, got 7" in messages[3]
    assert "method must be POST" in messages[4]


def test_plain_form_uses_line_numbers_as_custom_ids(tmp_path):
    path = write_jsonl(tmp_path / "in.txt", ["first prompt", "", '{"prompt": "second", "max_tokens": 3}', '{"x": 1}'])
    assert detect_format(path) == PLAIN
    entries = list(read_entries(path, PLAIN))
    assert [e.custom_id for e in entries] == ["1", "3", "4"]
    assert entries[0].body == {"prompt": "first prompt"}
    assert entries[1].body == {"prompt": "second", "max_tokens": 3}
    assert isinstance(entries[2], BadLine) and "needs a 'prompt' field" in entries[2].message


def test_duplicate_custom_ids_are_rejected_with_their_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [completion("a", "x"), completion("b", "x"), completion("a", "y"),
                                          completion("b", "z"), completion("a", "w")])
    with pytest.raises(ValueError, match=r"2 duplicate custom_id\(s\): 'a' on lines 1, 3, 5; 'b' on lines 2, 4"):
        check_unique_ids(path, OPENAI)
    assert check_unique_ids(write_jsonl(tmp_path / "ok.jsonl", [completion("a", "x"), "", completion("b", "x")]), OPENAI) == 2


@pytest.mark.parametrize("body, message", [
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens: Input should be a valid integer"),
    ({"prompt": "x", "temperature": -1}, "temperature: Input should be greater than or equal to 0"),
    ({"prompt": "x", "tools": []}, "tools: tools need /v1/chat/completions"),
    ({"prompt": ["a", "b"]}, "a batch line holds one prompt, got 2"),
    ({"prompt": [1, 999]}, "outside the vocabulary"),
    ({"prompt": "x", "stream": True}, "stream must be false"),
    ({"prompt": "x", "model": "gpt-4o-mini"}, "the model 'gpt-4o-mini' does not exist"),
])
def test_invalid_bodies_become_bad_lines(body, message):
    req = BatchRequest(0, 4, "r", "/v1/completions", body)
    bad = prepare(req, context(), 0)
    assert isinstance(bad, BadLine) and bad.message.startswith("line 4: ") and message in bad.message


def context(**overrides) -> ServingContext:
    return job_context("tiny", JobConfig(defaults=overrides), ByteTokenizer(), 2048, 259, SamplingParams())


def test_prepare_fills_params_with_defaults_and_a_custom_id_seed():
    tok = ByteTokenizer()
    req = prepare(BatchRequest(0, 1, "r", "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5,
                                "logprobs": True, "top_logprobs": 2}), context(max_tokens=9, temperature=0.5), 3)
    assert req.params.max_tokens == 5 and req.params.temperature == 0.5 and req.params.logprobs == 2
    assert req.params.seed == derived_seed("r", 3) != derived_seed("r", 4)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert req.prompt_token_ids == tok.encode(text, add_special_tokens=False)
    seeded = prepare(BatchRequest(0, 1, "s", "/v1/completions", {"prompt": "x", "seed": 11}), context(), 3)
    assert seeded.params.seed == 11
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert prepare(BatchRequest(0, 1, "c", "/v1/chat/completions", chat), context(), 0).params.max_tokens == \
        2048 - len(req.prompt_token_ids)  # OpenAI's default for chat: the rest of the context


def test_scan_output_cuts_a_torn_last_line_and_collects_done_ids(tmp_path):
    out = tmp_path / "out.jsonl"
    with ResultWriter(out, fsync_every=256) as w:
        w.write({"custom_id": "a", "response": {}, "error": None})
        w.write({"custom_id": None, "response": None, "error": {"message": "bad", "line": 4}})
    good = out.read_bytes()
    with open(out, "ab") as f:
        f.write(b'{"custom_id": "b", "resp')  # a write cut short by a kill
    done = scan_output(out)
    assert done.custom_ids == {"a"} and done.lines == {4} and (done.num_ok, done.num_failed) == (1, 1)
    assert out.read_bytes() == good
    with ResultWriter(out, fsync_every=256) as w:  # appending after the repair gives whole lines only
        w.write({"custom_id": "b", "response": {}, "error": None})
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["a", None, "b"]


def test_a_result_is_one_line_to_every_line_reader(tmp_path):
    """Text a model wrote may hold characters that JSON keeps raw but str.splitlines (and JavaScript) break lines
    at: they are written escaped, and read back as they were."""
    out = tmp_path / "out.jsonl"
    text = "a\u2028b\u2029c\x85d \u00e9\u4e2d"
    with ResultWriter(out, fsync_every=256) as w:
        w.write({"custom_id": "a", "response": {"text": text}, "error": None})
        w.write({"custom_id": "b", "response": {}, "error": None})
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == ["a", "b"]
    assert json.loads(lines[0])["response"]["text"] == text
    assert "\u00e9\u4e2d" in lines[0]  # other text stays as it is, unescaped
    assert scan_output(out).custom_ids == {"a", "b"}


def test_scan_output_refuses_a_file_that_is_not_results(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"custom_id": "a", "error": null}\nhello\n')
    with pytest.raises(ValueError, match="line 2 is not a result entry"):
        scan_output(out)

"""Tool-call parsers: calls come out in OpenAI's shape; anything that is not a valid call stays content."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.openai.tool_parsers import TOOL_PARSERS, parse_hermes, parse_llama3_json, parse_mistral


def test_hermes_calls_after_text_and_an_unclosed_last_call():
    text = 'Let me check.\n<tool_call>\n{"name": "get", "arguments": {"city": "Oslo"}}\n</tool_call>\n' \
           '<tool_call>{"name": "time", "arguments": {}}'
    out = parse_hermes(text)
    assert out.content == "Let me check."
    assert out.calls == [("get", '{"city": "Oslo"}'), ("time", "{}")]


def test_llama3_json_calls_joined_by_semicolons_after_the_python_tag():
    out = parse_llama3_json('<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}')
    assert out.content is None and out.calls == [("a", '{"x": 1}'), ("b", "{}")]


def test_mistral_calls():
    out = parse_mistral('[TOOL_CALLS] [{"name": "f", "arguments": "{\\"q\\": 2}"}]')
    assert out.calls == [("f", '{"q": 2}')]


@pytest.mark.parametrize("parser, text", [
    (parse_hermes, "<tool_call>{not json}</tool_call>"),
    (parse_hermes, '<tool_call>{"arguments": {}}</tool_call>'),
    (parse_llama3_json, '{"name": "a", "parameters": [1]}'),
    (parse_llama3_json, "{broken"),
    (parse_mistral, "[TOOL_CALLS] nope"),
])
def test_what_is_not_a_valid_call_stays_content(parser, text):
    out = parser(text)
    assert out.calls == [] and out.content == text.strip()


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(max_size=60) | st.sampled_from(["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>{"]).flatmap(
    lambda prefix: st.text(max_size=40).map(lambda t: prefix + t)))
def test_parsers_never_raise_and_calls_carry_json_object_arguments(text):
    for parser in TOOL_PARSERS.values():
        out = parser(text)
        for name, args in out.calls:
            assert isinstance(name, str) and isinstance(json.loads(args), dict)
        if not out.calls:
            assert out.content == (text.strip() or None)

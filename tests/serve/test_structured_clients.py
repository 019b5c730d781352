"""Structured output and tools through the clients people use: `openai`'s `.parse`, LangChain's
`with_structured_output` (all three methods) and `bind_tools`, against a live server on `tiny`.

`tiny`'s weights are random, so whatever parses and validates here does so because the grammar made it.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

langchain_openai = pytest.importorskip("langchain_openai")

HI = [{"role": "user", "content": "Describe the sky."}]


class Sky(BaseModel):
    """What the sky looks like."""

    model_config = ConfigDict(extra="forbid")  # no free-form extra keys for a random model to ramble in

    color: Literal["blue", "grey", "red"]
    cloudy: bool


def get_weather(city: Literal["Oslo", "Rome"]) -> str:
    """The weather in a city."""
    return "sunny"


def get_time(zone: Literal["UTC", "CET"]) -> str:
    """The time in a zone."""
    return "noon"


@pytest.fixture(scope="module")
def oa(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def chat_model(server):
    return langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="tiny", max_retries=0,
                                       max_tokens=160, temperature=1.0, seed=1)


def test_openai_parse_returns_the_pydantic_object(oa):
    for seed in range(3):
        resp = oa.chat.completions.parse(model="tiny", messages=HI, response_format=Sky, max_tokens=40, seed=seed)
        assert isinstance(resp.choices[0].message.parsed, Sky)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])  # json_mode: any object; real-model test
def test_langchain_with_structured_output(chat_model, method):
    out = chat_model.with_structured_output(Sky, method=method).invoke("Describe the sky.")
    assert isinstance(out, Sky)


def test_langchain_bind_tools_required_returns_valid_calls(chat_model):
    msg = chat_model.bind_tools([get_weather, get_time], tool_choice="required",
                                parallel_tool_calls=False).invoke("Weather in Oslo?")
    assert len(msg.tool_calls) == 1  # parallel_tool_calls false: the grammar allows one call
    for call in msg.tool_calls:
        assert call["name"] in ("get_weather", "get_time")
        assert set(call["args"]) <= {"city", "zone"} and call["id"]


def test_tool_round_trip_renders_the_tool_result_into_the_prompt(oa, server):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]
    first = oa.chat.completions.create(model="tiny", messages=HI, tools=tools, tool_choice="required", max_tokens=160,
                                       seed=2, parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time") and isinstance(json.loads(call.function.arguments), dict)
    follow = [*HI, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "It is 21 degrees."}]
    second = oa.chat.completions.create(model="tiny", messages=follow, max_tokens=2)
    tok = server.llm.get_tokenizer()
    text = tok.decode(tok.encode("It is 21 degrees.", add_special_tokens=False))
    tokens = httpx.post(server.url + "/tokenize", json={"model": "tiny", "messages": follow}).json()["tokens"]
    assert text in tok.decode(tokens, skip_special_tokens=False)
    assert second.usage.prompt_tokens == len(tokens)


def test_named_tool_choice_and_streaming_tool_calls(oa):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}}, "required": ["city"]}}}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    full = oa.chat.completions.create(model="tiny", messages=HI, tools=tools, tool_choice=named, max_tokens=60, seed=4)
    (call,) = full.choices[0].message.tool_calls
    assert json.loads(call.function.arguments)["city"] in ("Oslo", "Rome")
    assert full.choices[0].finish_reason == "stop"  # OpenAI keeps "stop" when the request named the function
    streamed = []
    for chunk in oa.chat.completions.create(model="tiny", messages=HI, tools=tools, tool_choice=named, max_tokens=60,
                                            seed=4, stream=True):
        for ch in chunk.choices:
            streamed += ch.delta.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in streamed] == [("get_weather", call.function.arguments)]


class Capital(BaseModel):
    model_config = ConfigDict(extra="forbid")
    country: str = Field(max_length=30)
    city: str = Field(max_length=30)


@pytest.fixture(scope="module")
def real_server(smollm2_gguf, start_server):
    with start_server(model=str(smollm2_gguf)) as server:
        yield server


@pytest.fixture(scope="module")
def real_oa(real_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0)


def test_real_model_parse_answers_in_the_schema(real_oa):
    q = [{"role": "user", "content": "What is the capital of France? Answer in JSON with country and city."}]
    resp = real_oa.chat.completions.parse(model="tiny", messages=q, response_format=Capital, max_tokens=40,
                                          temperature=0)
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, Capital) and "Paris" in parsed.city


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_real_model_langchain_with_structured_output(real_server, method):
    model = langchain_openai.ChatOpenAI(base_url=real_server.url + "/v1", api_key="unused", model="tiny",
                                        max_retries=0, max_tokens=60, temperature=0)
    prompt = "What is the capital of France? Answer in JSON with the keys country and city."
    if method == "json_mode":
        out = model.with_structured_output(method="json_mode").invoke(prompt)
        assert isinstance(out, dict) and out
    else:
        assert isinstance(model.with_structured_output(Capital, method=method).invoke(prompt), Capital)


def test_real_model_bind_tools_and_the_tool_round_trip(real_server, real_oa):
    model = langchain_openai.ChatOpenAI(base_url=real_server.url + "/v1", api_key="unused", model="tiny",
                                        max_retries=0, max_tokens=60, temperature=0)
    msg = model.bind_tools([get_weather, get_time], tool_choice="required", parallel_tool_calls=False).invoke(
        "What is the weather in Rome?")
    (call,) = msg.tool_calls
    assert call["name"] in ("get_weather", "get_time")
    follow = [{"role": "user", "content": "What is the weather in Rome?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": call["id"], "type": "function",
                   "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}]},
              {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 24 degrees."}]
    answer = real_oa.chat.completions.create(model="tiny", messages=follow, max_tokens=30, temperature=0)
    tokens = httpx.post(real_server.url + "/tokenize", json={"messages": follow}).json()["tokens"]
    tok = real_server.llm.get_tokenizer()
    assert "Sunny, 24 degrees." in tok.decode(tokens, skip_special_tokens=False)
    assert answer.usage.prompt_tokens == len(tokens) and answer.choices[0].message.content

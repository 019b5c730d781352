"""`serve` and `run` on one OpenAI layer: the same body gets the same decision, message and choices from both."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from batchserve.engine.llm_engine import LLMEngine  # noqa: E402
from batchserve.entrypoints.openai.api_server import build_app  # noqa: E402
from batchserve.jobs.engine_backend import local_job  # noqa: E402
from batchserve.jobs.runner import JobConfig  # noqa: E402

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
HI = [{"role": "user", "content": "hi"}]
TOOL_TURNS = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "12 C"},
]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "the time now"}},
]
VALID = [
    (COMPLETIONS, {"prompt": "Hello", "max_tokens": 5, "seed": 1}),
    (COMPLETIONS, {"prompt": [72, 101, 108], "max_tokens": 4, "seed": 2, "temperature": 0.7}),
    (COMPLETIONS, {"prompt": "abc", "max_tokens": 6, "seed": 3, "logprobs": 2}),
    (COMPLETIONS, {"prompt": "abc", "max_tokens": 4, "seed": 4, "echo": True}),
    (COMPLETIONS, {"prompt": "abc", "max_tokens": 3, "seed": 5, "echo": True, "logprobs": 1}),
    (COMPLETIONS, {"prompt": "xyz", "max_tokens": 8, "seed": 6, "stop": ["a", "b"]}),
    (COMPLETIONS, {"prompt": "xyz", "max_tokens": 4, "seed": 7, "n": 3}),
    (COMPLETIONS, {"prompt": "q", "max_tokens": 4, "seed": 8, "logit_bias": {"120": 100}}),
    (COMPLETIONS, {"prompt": "q", "max_tokens": 4, "seed": 9, "store": True, "metadata": {"k": "v"},
                   "service_tier": "auto", "user": "u"}),
    (COMPLETIONS, {"prompt": "q", "max_tokens": 3, "seed": 10, "prompt_logprobs": 1}),
    (COMPLETIONS, {"prompt": "q", "max_tokens": 5, "seed": 11, "min_tokens": 5, "ignore_eos": True, "top_k": 5,
                   "top_p": 0.9, "presence_penalty": 0.5, "repetition_penalty": 1.2}),
    (COMPLETIONS, {"prompt": "a long prompt", "max_tokens": 3, "seed": 12, "truncate_prompt_tokens": 2}),
    (CHAT, {"messages": HI, "max_tokens": 5, "seed": 13}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_tokens": 4, "seed": 14}),
    (CHAT, {"messages": HI, "max_tokens": 3, "seed": 15, "logprobs": True, "top_logprobs": 2}),
    (CHAT, {"messages": TOOL_TURNS, "max_tokens": 3, "seed": 16}),
    (CHAT, {"messages": [*HI, {"role": "assistant", "content": "The"}], "add_generation_prompt": False,
            "continue_final_message": True, "echo": True, "max_tokens": 3, "seed": 17}),
    (CHAT, {"messages": HI, "chat_template_kwargs": {"x": 1}, "reasoning_effort": "low",
            "max_completion_tokens": 3, "seed": 18}),
    (CHAT, {"messages": HI, "max_tokens": 3, "seed": 19, "parallel_tool_calls": False, "user": "x"}),
    (CHAT, {"messages": HI, "seed": 20, "logit_bias": {"10": 100}, "stop": ["\n"]}),  # default max_tokens
    (CHAT, {"messages": HI, "model": "tiny", "max_tokens": 2, "seed": 21, "prompt_logprobs": 2}),
    (CHAT, {"messages": HI, "max_tokens": 60, "seed": 22, "response_format": {"type": "json_schema", "json_schema": {
        "name": "p", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}}),
    (CHAT, {"messages": HI, "max_tokens": 20, "seed": 23, "response_format": {"type": "json_object"}}),
    (COMPLETIONS, {"prompt": "pick", "max_tokens": 8, "seed": 24, "guided_choice": ["red", "green"]}),
    (COMPLETIONS, {"prompt": "date", "max_tokens": 12, "seed": 25, "structured_outputs": {"regex": "[0-9]{4}-[0-9]{2}"}}),
    (CHAT, {"messages": HI, "max_tokens": 40, "seed": 26, "tools": TOOLS, "tool_choice": "required"}),
    (CHAT, {"messages": HI, "max_tokens": 40, "seed": 27, "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    (CHAT, {"messages": TOOL_TURNS, "max_tokens": 3, "seed": 28, "tools": TOOLS}),
]
INVALID = [
    (COMPLETIONS, {"prompt": "x", "temperature": float("nan")}),
    (COMPLETIONS, {"prompt": "x", "temperature": float("inf")}),
    (COMPLETIONS, {"prompt": "x", "seed": 2**70}),
    (COMPLETIONS, {"prompt": "x", "n": 10000}),
    (COMPLETIONS, {"prompt": "x", "foo": 1, "bar": 2}),
    (COMPLETIONS, {"prompt": "x", "tools": []}),
    (COMPLETIONS, {"prompt": [1, 999]}),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"abc": 1}}),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"5": 500}}),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"5000": 5}}),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 0}),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "5"}),
    (COMPLETIONS, {"prompt": "x", "top_p": 0}),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}),
    (COMPLETIONS, {"prompt": "x", "model": "other"}),
    (COMPLETIONS, {"prompt": "x", "stop_token_ids": [-1]}),
    (COMPLETIONS, {"prompt": "x", "prompt_logprobs": 50}),
    (COMPLETIONS, {"prompt": "x", "suffix": "y"}),
    (CHAT, {"messages": [{"role": "robot", "content": "x"}]}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    (CHAT, {"messages": []}),
    (CHAT, {"messages": HI, "top_logprobs": 2}),
    (CHAT, {"messages": HI, "continue_final_message": True}),
    (CHAT, {"messages": HI, "response_format": {"type": "json_object"}, "tool_choice": "auto"}),
    (CHAT, {"messages": HI, "reasoning_effort": "extreme"}),
    (CHAT, {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}),
    (COMPLETIONS, {"prompt": "x", "guided_regex": "(?<=a)b"}),
    (COMPLETIONS, {"prompt": "x", "guided_grammar": "root ::= ("}),
    (CHAT, {"messages": HI, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    (COMPLETIONS, {"prompt": "x", "guided_choice": ["a"], "guided_regex": "a"}),
    (CHAT, {"messages": HI, "response_format": {"type": "json_schema"}}),
]
ENGINE = dict(device="cpu", kv_cache_memory="16MiB", max_num_batched_tokens=512, max_num_seqs=32)


@pytest.fixture(scope="module")
def served() -> dict[int, tuple[int, dict]]:
    app = build_app(LLMEngine("tiny", **ENGINE), "tiny")
    with TestClient(app) as client:
        return {i: _post(client, url, body) for i, (url, body) in enumerate(VALID + INVALID)}


def _post(client: TestClient, url: str, body: dict) -> tuple[int, dict]:
    r = client.post(url, content=json.dumps(body), headers={"content-type": "application/json"})
    return r.status_code, r.json()


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp("job")
    lines = [json.dumps({"custom_id": str(i), "method": "POST", "url": url, "body": body})
             for i, (url, body) in enumerate(VALID + INVALID)]
    (tmp / "in.jsonl").write_text("\n".join(lines) + "\n")
    local_job(str(tmp / "in.jsonl"), str(tmp / "out.jsonl"), "tiny", ENGINE, JobConfig(), quiet=True)
    records = [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]
    return {int(r["custom_id"]): r for r in records}


@pytest.mark.parametrize("i", range(len(VALID)))
def test_valid_bodies_get_identical_choices(served, ran, i):
    status, body = served[i]
    record = ran[i]
    assert status == 200, body
    assert record["error"] is None, record["error"]
    job_body = record["response"]["body"]
    assert json.dumps(rounded(job_body["choices"])) == json.dumps(rounded(body["choices"]))
    for key in ("prompt_tokens", "completion_tokens"):
        assert job_body["usage"][key] == body["usage"][key]
    assert rounded(job_body.get("prompt_logprobs")) == rounded(body.get("prompt_logprobs"))


def rounded(value):
    """Logprobs to 4 decimals: fp32 GEMMs of different batch shapes differ in the last bits (tokens do not)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("i", range(len(VALID), len(VALID) + len(INVALID)))
def test_invalid_bodies_are_rejected_by_both_with_the_same_message(served, ran, i):
    status, body = served[i]
    record = ran[i]
    assert status in (400, 404), body
    assert record["response"] is None
    assert record["error"]["message"] == f"line {i + 1}: {body['error']['message']}"
    assert record["error"]["param"] == body["error"]["param"]


def test_every_offending_field_is_named_at_once(served):
    status, body = served[len(VALID) + 4]  # foo and bar
    assert "foo" in body["error"]["message"] and "bar" in body["error"]["message"]

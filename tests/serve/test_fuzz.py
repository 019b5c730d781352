"""Hypothesis-generated request bodies: no request ever gets a 5xx or takes the server down.

Bodies mix plausible values with arbitrary JSON in every field of the schema
(and fields outside it), so both the validation layer and the engine behind
it are exercised. A request valid but long is cut by the client's timeout,
which exercises the disconnect path too.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchserve.jobs.batch_io import BadLine, BatchRequest
from batchserve.jobs.openai_format import job_context, prepare
from batchserve.jobs.runner import JobConfig
from batchserve.openai import ChatCompletionRequest, CompletionRequest
from batchserve.request import SamplingParams
from batchserve.tokenizer import ByteTokenizer

JOB_CONTEXT = job_context("tiny", JobConfig(), ByteTokenizer(), 2048, 259, SamplingParams())

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
SMALL_INT = st.integers(-2, 6)
# In-range values: a body made of these alone is (almost always) served, so the engine path is fuzzed too.
VALID = {
    "model": st.just("tiny"),
    "prompt": st.text(max_size=30) | st.lists(st.integers(0, 258), min_size=1, max_size=8)
    | st.lists(st.text(max_size=5), min_size=1, max_size=3),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=20)}),
        min_size=1, max_size=3),
    "max_tokens": st.integers(1, 8) | st.none(), "max_completion_tokens": st.integers(1, 8), "min_tokens": st.integers(0, 1),
    "n": st.integers(1, 3), "top_logprobs": st.integers(0, 3), "top_k": st.integers(-1, 50),
    "temperature": st.floats(0, 2), "top_p": st.floats(0.05, 1), "min_p": st.floats(0, 0.5),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2), "seed": st.integers(0, 2**63 - 1),
    "stop": st.text(min_size=1, max_size=2) | st.lists(st.text(min_size=1, max_size=2), max_size=3),
    "stop_token_ids": st.lists(st.integers(0, 258), max_size=3), "stream": st.booleans(),
    "priority": st.integers(-100, 100), "ttft_slo": st.floats(0.01, 100),
    "ignore_eos": st.booleans(), "include_stop_str_in_output": st.booleans(), "skip_special_tokens": st.booleans(),
    "user": st.text(max_size=5), "store": st.booleans(), "metadata": st.dictionaries(st.text(max_size=4), st.text()),
    "logit_bias": st.dictionaries(st.integers(0, 258).map(str), st.floats(-100, 100), max_size=3),
    "echo": st.booleans(), "prompt_logprobs": st.integers(0, 3), "truncate_prompt_tokens": st.integers(1, 10),
    "add_generation_prompt": st.booleans(), "chat_template_kwargs": st.dictionaries(st.text(max_size=4), JUNK),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans(),
                                                          "continuous_usage_stats": st.booleans()}),
}
VALID_LOGPROBS = {CompletionRequest: st.integers(0, 5), ChatCompletionRequest: st.booleans()}
# Out-of-range and wrong-shaped values, one or two of which replace a field of a valid body.
MUTANT = {
    "model": st.text(max_size=8),
    "prompt": st.lists(st.integers(-5, 300), max_size=8) | st.lists(st.lists(st.integers(-1, 300), max_size=4),
                                                                      max_size=3),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "tool", "bot", "assistant"])},
        optional={"content": st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=8)}), max_size=2),
            "name": st.text(max_size=5), "tool_call_id": st.text(max_size=4),
            "tool_calls": st.lists(st.fixed_dictionaries({"id": st.text(max_size=3), "type": st.just("function"),
                                                          "function": st.fixed_dictionaries(
                                                              {"name": st.text(max_size=3),
                                                               "arguments": st.text(max_size=10)})}),
                                   max_size=2)}), max_size=3),
    "logit_bias": st.dictionaries(st.text(max_size=4), JUNK, max_size=2), "truncate_prompt_tokens": st.integers(),
    "max_tokens": st.integers(-2, 3000) | st.integers(), "n": st.integers(-2, 200), "logprobs": SMALL_INT,
    "temperature": st.floats(), "top_p": st.floats(), "seed": st.integers(-3, 2**64),
    "stop": st.lists(st.text(max_size=2), max_size=3), "stop_token_ids": st.lists(st.integers(), max_size=3),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "priority": st.integers(), "ttft_slo": st.floats(),
}


@st.composite
def bodies(draw: st.DrawFn, schema: type) -> dict:
    """A valid body with up to two fields replaced by mutants or arbitrary JSON (or one unknown field added)."""
    names = sorted(schema.model_fields)
    valid = {**VALID, "logprobs": VALID_LOGPROBS[schema]}
    required = "prompt" if "prompt" in names else "messages"
    body = draw(st.fixed_dictionaries({required: valid[required]},
                                      optional={n: valid[n] for n in names if n in valid and n != required}))
    for name in draw(st.lists(st.sampled_from([*names, "echo", "bogus"]), max_size=2, unique=True)):
        body[name] = draw(MUTANT.get(name, JUNK) | JUNK)
    return body


def _check(client: httpx.Client, path: str, body: object) -> None:
    try:
        # json.dumps writes NaN and Infinity, which Python's parser on the server accepts: fuzz them too.
        content = json.dumps(body)
        with client.stream("POST", path, content=content, headers={"content-type": "application/json"}) as r:
            text = r.read().decode()
    except httpx.ReadTimeout:
        return  # valid and long: the client gave up, the server aborts it
    assert r.status_code < 500, (body, r.status_code, text)
    if r.status_code >= 400:
        assert isinstance(json.loads(text)["error"]["message"], str)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
    else:
        assert json.loads(text)["choices"]


# 60 bodies a test (each CI run draws new ones): the chat test served 100 in 8.5 s under `-n 2`
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def fuzz_client(start_server):
    """A server whose sequences end at 192 tokens: a body without max_tokens (a third of them) generates to
    max_model_len, and a stream of 2,000 tokens outlasted the client's read timeout chunk by chunk (43 s of
    the chat test under `-n 2`)."""
    with start_server(max_model_len=192) as server, httpx.Client(
            base_url=server.url, timeout=httpx.Timeout(5.0, read=0.2)) as c:
        yield c


@FUZZ
@given(body=bodies(CompletionRequest))
def test_completion_bodies_never_get_a_5xx(fuzz_client, body):
    _check(fuzz_client, "/v1/completions", body)


@FUZZ
@given(body=bodies(ChatCompletionRequest))
def test_chat_bodies_never_get_a_5xx(fuzz_client, body):
    _check(fuzz_client, "/v1/chat/completions", body)


@FUZZ
@given(body=bodies(CompletionRequest) | bodies(ChatCompletionRequest), chat=st.booleans())
def test_batch_lines_only_ever_fail_as_error_entries(body, chat):
    """`run` prepares a line through the same layer: any body is a request or a BadLine, never an exception."""
    line = BatchRequest(0, 1, "r", "/v1/chat/completions" if chat else "/v1/completions", body)
    assert isinstance(prepare(line, JOB_CONTEXT, 0), (BatchRequest, BadLine))


@settings(max_examples=40, deadline=None, database=None)
@given(body=JUNK)
def test_arbitrary_json_never_gets_a_5xx(fuzz_client, body):
    _check(fuzz_client, "/v1/completions", body)


def test_server_is_healthy_after_fuzzing(fuzz_client):
    assert fuzz_client.get("/health").status_code == 200
    r = fuzz_client.post("/v1/completions", json={"model": "tiny", "prompt": "still here", "max_tokens": 2})
    assert r.status_code == 200

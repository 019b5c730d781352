"""HTTP-level behaviour: error shapes and the field they name, /metrics, scheduling policies."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path, body, param, words", [
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature", "valid number"),
    ("/v1/completions", {"prompt": "x", "stop": ["ok", ""]}, "stop", "at least 1 character"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs", "less than or equal to 20"),
    ("/v1/completions", {"prompt": "x", "bogus": 1}, "bogus", "unrecognized request argument"),
    ("/v1/completions", {"prompt": "x", "min_tokens": 5, "max_tokens": 2}, "min_tokens", "min_tokens must be in"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options",
     "only allowed when stream is true"),
    ("/v1/completions", {"max_tokens": 3}, "prompt", "prompt is required"),
    ("/v1/completions", {"prompt": []}, "prompt", "prompt"),
    ("/v1/completions", {"prompt": [65, 300]}, "prompt", "outside the vocabulary [0, 259)"),
    ("/v1/completions", {"prompt": ["ok", [1]]}, "prompt", "prompt"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, "seed", "greater than or equal to 0"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [7, -3]}, "stop_token_ids", "greater than or equal to 0"),
    ("/v1/chat/completions", {"messages": []}, "messages", "at least 1 item"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages", "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages",
     "messages.0.content"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, "top_logprobs", "needs logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 0}, "max_completion_tokens", "greater"),
])
def test_invalid_request_is_a_400_naming_the_field(client, path, body, param, words):
    r = client.post(path, json={"model": "tiny", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert words in err["message"], err["message"]


def test_null_means_the_default(client):
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": None, "temperature": None, "seed": None,
                                             "stop": None, "logprobs": None, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("content, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"", "missing"),
])
def test_malformed_body_is_a_400(client, content, words):
    r = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_unknown_model_route_and_method_get_openai_error_bodies(client):
    r = client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/completions").status_code == 405


def test_metrics_count_tokens_and_latencies(client):
    def scrape() -> dict[str, float]:
        text = client.get("/metrics").text
        return {m[0]: float(m[1]) for m in re.findall(r"^(batchserve:\w+)(?:\{[^}]*\})? (\S+)$", text, re.M)}

    before = scrape()
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "count me", "max_tokens": 7,
                                             "ignore_eos": True}).json()
    after = scrape()
    assert r["usage"]["completion_tokens"] == 7
    assert after["batchserve:generation_tokens_total"] - before["batchserve:generation_tokens_total"] == 7
    assert after["batchserve:prompt_tokens_total"] > before["batchserve:prompt_tokens_total"]
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert after[f"batchserve:{hist}_count"] - before.get(f"batchserve:{hist}_count", 0) == 1
    assert after["batchserve:inter_token_latency_seconds_count"] - before.get(
        "batchserve:inter_token_latency_seconds_count", 0) == 6
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                  "prefix_cache_queries_total", "prefix_cache_hits_total"):
        assert f"batchserve:{gauge}" in after


def test_repeated_prompt_hits_the_prefix_cache(client):
    body = {"model": "tiny", "prompt": "a shared system prompt " * 4, "max_tokens": 1}
    client.post("/v1/completions", json=body)
    r = client.post("/v1/completions", json=body).json()
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16


@pytest.mark.parametrize("policy, urgent, relaxed", [
    ("priority", {"priority": -1}, {"priority": 5}),
    ("edf", {"ttft_slo": 30}, {"ttft_slo": 600}),  # no deadline near enough to preempt the blocker, even on a loaded machine
])
def test_policy_serves_the_urgent_request_first(start_server, policy, urgent, relaxed):
    body = {"model": "tiny", "max_tokens": 5, "ignore_eos": True}
    with start_server(max_num_seqs=1, policy=policy) as server:
        # The engine's own finish order: client threads return from their responses in any order on a busy machine.
        finished: list[str] = []
        step = server.llm.step  # the engine thread looks it up at every step
        decode = server.llm.get_tokenizer().decode

        def recording_step() -> list:
            outputs = step()
            finished.extend(decode(out.prompt_token_ids) for out in outputs if out.finished)
            return outputs

        server.llm.step = recording_step

        def post(name: str, extra: dict) -> None:
            httpx.post(server.url + "/v1/completions", json={**body, "prompt": name, **extra}, timeout=60)

        # One slot: a long request holds it while the other two queue up, relaxed first.
        blocker = threading.Thread(target=post, args=("blocker", {"max_tokens": 300}))
        blocker.start()
        while server.engine.stats.num_running == 0:
            time.sleep(0.005)
        late = [threading.Thread(target=post, args=(name, extra)) for name, extra in
                (("relaxed", relaxed), ("urgent", urgent))]
        for t in late:
            t.start()
            while server.engine.stats.num_waiting < late.index(t) + 1:
                time.sleep(0.005)
        for t in [blocker, *late]:
            t.join()
        assert finished == ["blocker", "urgent", "relaxed"]
        assert server.llm.stats().num_preemptions == 0


def test_without_a_tokenizer_token_ids_stream_and_text_is_refused(start_server):
    with start_server(skip_tokenizer_init=True) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4, "ignore_eos": True}).json()
        assert r["usage"]["completion_tokens"] == 4 and r["choices"][0]["text"] == ""
        for path, body, param in (("/v1/completions", {"prompt": "text"}, "prompt"),
                                  ("/v1/completions", {"prompt": [1], "stop": "x"}, "stop"),
                                  ("/v1/chat/completions", {"messages": CHAT}, "messages")):
            err = c.post(path, json=body)
            assert err.status_code == 400 and err.json()["error"]["param"] == param


def test_engine_failure_is_a_503_and_health_says_so(start_server):
    with start_server() as server, httpx.Client(base_url=server.url, timeout=30) as c:
        def broken_step() -> list:
            raise RuntimeError("device lost")

        server.llm.step = broken_step  # the engine thread looks it up at every step
        body = {"prompt": "x", "max_tokens": 2}
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 503 and "device lost" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 503
        assert c.post("/v1/completions", json=body).status_code == 503
        with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 503


def test_a_request_that_breaks_while_being_added_fails_alone(start_server):
    with start_server() as server:
        add = server.llm.add_request

        def flaky(request_id, prompt, params, **kw):
            if params.max_tokens == 7:
                raise RuntimeError("boom")
            return add(request_id, prompt, params, **kw)

        server.llm.add_request = flaky
        with httpx.Client(base_url=server.url, timeout=60) as c:
            bad = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 7})
            assert bad.status_code == 400 and "boom" in bad.json()["error"]["message"]
            ok = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
            assert c.get("/health").status_code == 200


def test_the_checkpoints_max_new_tokens_caps_a_chat_without_max_tokens(start_server, monkeypatch):
    import batchserve.engine.llm_engine as llm_engine

    monkeypatch.setattr(llm_engine, "read_generation_config", lambda path: {"max_new_tokens": 3})
    with start_server() as server, httpx.Client(base_url=server.url, timeout=60) as c:
        body = {"model": "tiny", "messages": CHAT, "ignore_eos": True}
        assert c.post("/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] == 3
        r = c.post("/v1/chat/completions", json={**body, "max_tokens": 5}).json()
        assert r["usage"]["completion_tokens"] == 5  # the request's own max_tokens wins


def test_a_body_nested_too_deep_to_parse_is_a_400_and_the_server_goes_on(client):
    body = '{"prompt": ' + "[" * 5000 + "]" * 5000 + ', "max_tokens": 2}'
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200

"""/tokenize, /detokenize, /version, /ping and /v1/models/{id}: vLLM's shapes, and clear 400s."""

from __future__ import annotations

import httpx
import pytest

import batchserve

CHAT = [{"role": "user", "content": "hi"}]


def test_tokenize_a_prompt_adds_bos_unless_told_not_to(client):
    r = client.post("/tokenize", json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 200, r.text
    assert r.json() == {"count": 3, "max_model_len": 2048, "tokens": [256, ord("h"), ord("i")]}
    assert client.post("/tokenize", json={"prompt": "hi", "add_special_tokens": False}).json()["tokens"] == [104, 105]


def test_tokenized_chat_is_what_chat_completions_sends(client):
    tokens = client.post("/tokenize", json={"messages": CHAT}).json()
    usage = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1}).json()["usage"]
    assert tokens["count"] == len(tokens["tokens"]) == usage["prompt_tokens"]
    without = client.post("/tokenize", json={"messages": CHAT, "add_generation_prompt": False}).json()
    assert tokens["tokens"][:without["count"]] == without["tokens"] and without["count"] < tokens["count"]


def test_detokenize_round_trips_tokenize(client):
    tokens = client.post("/tokenize", json={"prompt": "héllo"}).json()["tokens"]
    assert client.post("/detokenize", json={"model": "tiny", "tokens": tokens}).json() == {"prompt": "<|bos|>héllo"}
    assert client.post("/detokenize", json={"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize("path, body, status, param, words", [
    ("/tokenize", {"prompt": "x", "messages": CHAT}, 400, "messages", "either prompt or messages"),
    ("/tokenize", {}, 400, "prompt", "prompt or messages is required"),
    ("/tokenize", {"prompt": "x", "add_generation_prompt": True}, 400, "add_generation_prompt", "messages only"),
    ("/tokenize", {"prompt": 5}, 400, "prompt", "valid string"),
    ("/tokenize", {"prompt": "x", "return_token_strs": True}, 400, "return_token_strs", "unrecognized"),
    ("/tokenize", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages", "messages.0.role"),
    ("/tokenize", {"prompt": "x", "model": "other"}, 404, "model", "does not exist"),
    ("/detokenize", {"tokens": [65, 259]}, 400, "tokens", "tokens.1: token id 259 is outside"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens", "token id -1 is outside"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens", "valid list"),
    ("/detokenize", {}, 400, "tokens", "tokens is required"),
])
def test_bad_tokenize_requests_name_the_field(client, path, body, status, param, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_without_a_tokenizer_they_answer_400(start_server):
    with start_server(skip_tokenizer_init=True) as server:
        for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
            r = httpx.post(server.url + path, json=body, timeout=30)
            assert r.status_code == 400 and "--skip-tokenizer-init" in r.json()["error"]["message"], r.text


def test_version_ping_and_the_model_card(client):
    assert client.get("/version").json() == {"version": batchserve.__version__}
    assert client.get("/ping").status_code == 200 and client.post("/ping").status_code == 200
    card = client.get("/v1/models/tiny").json()
    assert card == client.get("/v1/models").json()["data"][0] and card["id"] == "tiny"
    r = client.get("/v1/models/org/other")
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "the model 'org/other' does not exist; this server serves 'tiny'",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}

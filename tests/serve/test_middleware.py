"""The guards before every route: an API key (401) and a body size limit (413), both in OpenAI's error shape."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

KEY = "sk-test-key"
LIMIT = 4096
COMPLETION = {"prompt": "hi", "max_tokens": 1}


@pytest.fixture(scope="module")
def guarded(start_server):
    with start_server(app_args={"api_key": KEY, "max_request_bytes": LIMIT}) as server:
        yield server


def _post(url: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/health", "/ping", "/metrics", "/version"])
def test_probes_need_no_key(guarded, path):
    assert httpx.get(guarded.url + path, timeout=30).status_code == 200


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny", None),
    ("POST", "/v1/completions", COMPLETION),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("POST", "/tokenize", {"prompt": "hi"}),
    ("POST", "/detokenize", {"tokens": [65]}),
    ("GET", "/openapi.json", None),
])
def test_every_other_route_needs_the_key(guarded, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"}):
        r = httpx.request(method, guarded.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.request(method, guarded.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200, r.text


def test_the_openai_client_authenticates_with_the_key(guarded):
    good = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY)
    assert good.completions.create(model="tiny", **COMPLETION).usage.completion_tokens == 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(guarded):
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 401 ")


def _chunks(total: int, size: int = 1000):
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_gets_413_and_one_at_the_limit_is_read(guarded, chunked):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for size, status in ((LIMIT + 1, 413), (LIMIT, 400)):  # 400: the body is read (and is not JSON)
        headers = auth if chunked else {**auth, "Content-Length": str(size)}
        r = _post(guarded.url, "/v1/completions", content=_chunks(size), headers=headers)
        assert r.status_code == status, (size, r.text)
        if status == 413:
            assert r.json()["error"]["message"] == (f"the request body is larger than the server's limit of {LIMIT} "
                                                    "bytes (--max-request-bytes)")
    assert _post(guarded.url, "/v1/completions", json=COMPLETION, headers=auth).status_code == 200

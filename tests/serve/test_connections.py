"""Idle and slow clients: a connection must send its request headers within the header timeout, or it is closed.

uvicorn alone keeps a socket that never sends a request open forever, so a few
thousand idle sockets would pin a server's fds; here they go after the timeout,
and /health answers throughout.
"""

from __future__ import annotations

import resource
import socket
import time

import httpx
import pytest

from batchserve.entrypoints.openai.connections import header_deadline_protocol

TIMEOUT_S = 1.0
NUM_IDLE = 1000


@pytest.fixture(scope="module")
def server(start_server):
    with start_server(uvicorn_args={"http": header_deadline_protocol(TIMEOUT_S), "timeout_keep_alive": 5}) as s:
        yield s


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _is_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        s.setblocking(True)


def _closed_by_server(s: socket.socket, timeout_s: float) -> bool:
    s.settimeout(timeout_s)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_slowloris_sockets_are_closed_while_health_answers(server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * NUM_IDLE + 256  # both ends live in this process
    if soft < need and hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    elif soft < need:
        pytest.skip(f"needs {need} file descriptors, ulimit -n allows {hard}")
    socks = [_connect(server.url) for _ in range(NUM_IDLE)]
    try:
        for s in socks[::10]:  # slowloris: headers begun, never finished
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        probed_at = time.monotonic()  # fresh sockets: none may close before probed_at + TIMEOUT_S
        probes = [_connect(server.url) for _ in range(5)]
        socks += probes
        health_s = []
        with httpx.Client(base_url=server.url, timeout=5) as client:
            while time.monotonic() - probed_at < TIMEOUT_S + 0.5:
                t = time.monotonic()
                assert client.get("/health").status_code == 200
                health_s.append(time.monotonic() - t)
                if TIMEOUT_S / 2 < t - probed_at < TIMEOUT_S:
                    still_open = [_is_open(s) for s in probes]
                    if time.monotonic() - probed_at < TIMEOUT_S:  # else a heavily loaded machine made us late
                        assert all(still_open), "closed before the header timeout"
                time.sleep(0.05)
        assert max(health_s) < 1.0, health_s
        assert all(_closed_by_server(s, 3.0) for s in socks)
    finally:
        for s in socks:
            s.close()


def test_a_slow_body_or_a_long_response_is_not_cut(server):
    with _connect(server.url) as s:
        body = b'{"prompt": "hi", "max_tokens": 1}'
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(TIMEOUT_S * 1.5)  # the headers are complete: the deadline no longer applies
        s.sendall(body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_a_kept_alive_connection_gets_the_deadline_again_for_its_next_request(server):
    with _connect(server.url) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        time.sleep(TIMEOUT_S * 1.5)  # idle between requests: keep-alive (5 s) governs, not the header deadline
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the next request's headers begin, never end
        start = time.monotonic()
        assert _closed_by_server(s, 3.0)
        assert TIMEOUT_S * 0.8 < time.monotonic() - start < TIMEOUT_S + 1.0

"""A live server on a free localhost port, in a background thread of the test process.

In-process (not a subprocess) so tests can look at the engine's block pool
once the server has stopped.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from batchserve.entrypoints.openai.api_server import build_app
from batchserve.engine.llm_engine import LLMEngine


class LiveServer:
    def __init__(self, llm: LLMEngine, max_waiting: int | None) -> None:
        self.llm = llm
        self.app = build_app(llm, "tiny", max_waiting=max_waiting)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def engine(self) -> Any:
        """The AsyncEngine (its thread is stopped once the server is)."""
        return self.app.state.engine


@contextmanager
def live_server(max_waiting: int | None = None, **engine_args: Any) -> Iterator[LiveServer]:
    """The tiny model served on a free port; extra keyword args go to LLMEngine."""
    server = LiveServer(LLMEngine("tiny", kv_cache_memory="64MiB", **engine_args), max_waiting)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def start_server() -> Any:
    """`with start_server(max_waiting=..., **engine_args) as server:` for tests that need their own config."""
    return live_server


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server() as s:
        yield s


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c

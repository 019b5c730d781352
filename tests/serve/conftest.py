"""A live server on a free localhost port, in a background thread of the test process.

In-process (not a subprocess) so tests can look at the engine's block pool
once the server has stopped; `serve_subprocess` runs `batchserve serve` itself
for tests of the CLI or of the server process's memory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import batchserve
from batchserve.engine.llm_engine import LLMEngine
from batchserve.entrypoints.openai.api_server import build_app
from batchserve.entrypoints.serve_cmd import API_KEY_ENV_VARS


class LiveServer:
    def __init__(self, llm: LLMEngine, max_waiting: int | None, app_args: dict[str, Any] | None = None,
                 uvicorn_args: dict[str, Any] | None = None) -> None:
        self.llm = llm
        self.app = build_app(llm, "tiny", max_waiting=max_waiting, **(app_args or {}))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", lifespan="on", **(uvicorn_args or {})))
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
def live_server(max_waiting: int | None = None, app_args: dict[str, Any] | None = None,
                uvicorn_args: dict[str, Any] | None = None, **engine_args: Any) -> Iterator[LiveServer]:
    """The tiny model served on a free port; `app_args` go to build_app, `uvicorn_args` to uvicorn.Config,
    extra keyword args to LLMEngine."""
    server = LiveServer(LLMEngine("tiny", kv_cache_memory="64MiB", **engine_args), max_waiting, app_args,
                        uvicorn_args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
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


@contextmanager
def serve_subprocess(args: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """`batchserve serve --model tiny ARGS` in a child process; yields (base URL, pid) once /health answers."""
    with socket.socket() as s:  # a free port (the child binds it a moment later)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(batchserve.__file__).parents[1])  # the child runs the code under test
    inherited = {k: v for k, v in os.environ.items() if k not in API_KEY_ENV_VARS}  # a key only where a test sets one
    child_env = {**inherited, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **(env or {})}
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: an undrained pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "batchserve", "serve", "--model", "tiny", "--kv-cache-memory",
                             "64MiB", "--port", str(port), *args], env=child_env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the server exited: {log.read()}")
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def serve_process() -> Any:
    """`with serve_process(args, env=...) as (url, pid):` for tests that need the real `batchserve serve`."""
    return serve_subprocess

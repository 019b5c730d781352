"""The real `batchserve serve` process: the API key from the environment, and a 100 MiB body that is refused
without the server's memory growing by it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

MIB = 2**20
BODY = 100 * MIB


@pytest.fixture(scope="module")
def served(serve_process):
    with serve_process(env={"VLLM_API_KEY": "theirs"}) as (url, pid):
        yield url, pid


def test_the_api_key_comes_from_the_environment(served):
    url, _ = served
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer theirs"}, timeout=30).status_code == 200


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status memory field, in bytes."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _megabyte_chunks(total: int):
    chunk = b" " * MIB  # one buffer sent again and again: the client holds 1 MiB, not 100
    for _ in range(total // MIB):
        yield chunk


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset peak RSS")
@pytest.mark.parametrize("chunked", [False, True])
def test_a_100_mib_body_is_refused_and_the_server_does_not_hold_it(served, chunked):
    url, pid = served
    headers = {"Authorization": "Bearer theirs", "Content-Type": "application/json"}
    if not chunked:
        headers["Content-Length"] = str(BODY)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status(pid, "VmRSS")
    r = httpx.post(url + "/v1/completions", content=_megabyte_chunks(BODY), headers=headers, timeout=60)
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"], r.text
    grown = _status(pid, "VmHWM") - before
    assert grown < BODY, f"peak RSS grew by {grown / MIB:.0f} MiB"
    assert httpx.get(url + "/health", timeout=30).status_code == 200

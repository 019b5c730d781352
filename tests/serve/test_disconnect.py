"""Clients that go away: their requests are aborted at once and every KV block returns to the pool."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

NUM_CLIENTS, MAX_TOKENS = 64, 40


def _gauge(text: str, name: str) -> float:
    return float(re.search(rf"^batchserve:{name}\{{[^}}]*\}} (\S+)$", text, re.M).group(1))


def _wait_idle(url: str, timeout_s: float) -> float:
    """Seconds until /metrics shows no running or waiting request and no KV block in use."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        text = httpx.get(url + "/metrics").text
        if all(_gauge(text, g) == 0 for g in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")):
            return time.monotonic() - t0
        time.sleep(0.01)
    pytest.fail(f"engine not idle after {timeout_s} s:\n{text}")


async def _client(url: str, i: int, disconnect_after: int | None, max_tokens: int = MAX_TOKENS,
                  ) -> tuple[int, str | None]:
    """Stream one completion; returns (chunks seen, finish_reason), leaving early if told to."""
    body = {"model": "tiny", "prompt": f"client {i} says", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True, "seed": i}
    chunks, finish = 0, None
    async with httpx.AsyncClient(base_url=url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunks += 1
            finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
            if disconnect_after is not None and chunks >= disconnect_after:
                return chunks, None  # leaving the context managers closes the connection mid-stream
    return chunks, finish


def test_64_streaming_clients_a_quarter_disconnecting_leave_no_block_behind(start_server):
    with start_server(max_num_seqs=64) as server:
        async def run() -> list[tuple[int, str | None]]:
            return await asyncio.gather(*(
                _client(server.url, i, disconnect_after=3 + i % 5 if i % 4 == 0 else None) for i in range(NUM_CLIENTS)
            ))

        results = asyncio.run(run())
        stayed = [r for i, r in enumerate(results) if i % 4]
        assert len(stayed) == 48
        assert all(finish == "length" for _, finish in stayed), stayed  # every other request completed
        _wait_idle(server.url, timeout_s=10)
        aborted = int(re.search(r'request_success_total\{finished_reason="abort".*\} (\S+)',
                                httpx.get(server.url + "/metrics").text).group(1).split(".")[0])
        assert aborted == 16
    llm = server.llm  # the server and its engine thread have stopped: inspect the pool directly
    assert not llm.has_unfinished()
    assert not llm.scheduler.running and not llm.scheduler.waiting
    pool = llm.scheduler.kv.pool
    assert all(b.ref_cnt == 0 for b in pool.blocks)
    assert pool.num_free_blocks == pool.num_blocks


def test_disconnect_frees_the_blocks_at_once_not_at_max_tokens(start_server):
    with start_server() as server:
        # 2000 tokens would take seconds; the abort must land within a few steps.
        async def leave_early() -> int:
            return (await _client(server.url, 0, disconnect_after=5, max_tokens=2000))[0]

        assert asyncio.run(leave_early()) == 5
        assert _wait_idle(server.url, timeout_s=1.0) < 1.0
        body = {"model": "tiny", "prompt": "long", "max_tokens": 2000, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up is aborted too
            httpx.post(server.url + "/v1/completions", json=body, timeout=0.5)
        assert _wait_idle(server.url, timeout_s=1.0) < 1.0

"""Beyond --max-waiting the server answers 429 with Retry-After, and stays responsive."""

from __future__ import annotations

import asyncio
import time

import httpx


def test_overload_gets_429_with_retry_after_and_health_stays_responsive(start_server):
    body = {"model": "tiny", "prompt": "busy", "max_tokens": 400, "ignore_eos": True}
    with start_server(max_waiting=2, max_num_seqs=1) as server:
        async def run() -> tuple[list[httpx.Response], list[float]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
                posts = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(8)]
                health_s = []
                while not all(p.done() for p in posts):
                    t0 = time.monotonic()
                    assert (await c.get("/health")).status_code == 200
                    health_s.append(time.monotonic() - t0)
                    await asyncio.sleep(0.05)
                return [p.result() for p in posts], health_s

        responses, health_s = asyncio.run(run())
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes and set(codes) == {200, 429}, codes
        # With one running slot and two waiting, at most three are admitted at once.
        assert codes.count(200) <= 3
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error" and "max_waiting=2" in r.json()["error"]["message"]
            else:
                assert r.json()["usage"]["completion_tokens"] == 400
        assert len(health_s) >= 3 and max(health_s) < 0.5, health_s
        # Once the queue drains, requests are admitted again.
        assert httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 2}, timeout=30).status_code == 200

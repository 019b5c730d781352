"""`batchserve bench serve`: an open-loop load generator for any OpenAI-compatible completions server.

Requests come from the same `WorkloadSpec` the simulator uses (Poisson or
gamma arrivals, length distributions, shared prefixes) and are sent as token-id
prompts with `ignore_eos`, so every request has exactly the prompt and output
lengths drawn. Each streamed response becomes a `RequestRecord`, so the
report is `metrics.summarize` / `format_table`: the measured and the
simulated runs of one workload go through one metrics path.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from ...metrics import RequestRecord
from ...request import Request
from ...tables import render_table
from ...workload import WorkloadSpec, synthetic_requests


@dataclass
class BenchResult:
    records: list[RequestRecord]
    failures: Counter = field(default_factory=Counter)
    """Failed requests by reason ("HTTP 429", "ReadTimeout", ...)."""
    first_error: str | None = None


async def model_card(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """The first model the server lists (its id, and vocab_size / max_model_len where the server gives them)."""
    resp = await client.get(f"{url}/v1/models")
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        raise ValueError(f"{url}/v1/models lists no model")
    return data[0]


async def _send(client: httpx.AsyncClient, url: str, model: str, req: Request, t0: float) -> RequestRecord | str:
    """Stream one completion; a record of its timings, or why it failed."""
    body = {"model": model, "prompt": req.prompt_token_ids, "max_tokens": req.sampling_params.max_tokens,
            "ignore_eos": True, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter() - t0
    token_times: list[float] = []
    usage: dict[str, Any] = {}
    finish = "unknown"
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            detail = (await resp.aread()).decode(errors="replace")[:200]
            return f"HTTP {resp.status_code}: {detail}"
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return f"stream error: {chunk['error']}"
            now = time.perf_counter() - t0
            if chunk.get("choices"):
                token_times.append(now)
                finish = chunk["choices"][0].get("finish_reason") or finish
            if chunk.get("usage"):
                usage = chunk["usage"]
    if not token_times:
        return "no token streamed"
    nan = math.nan
    return RequestRecord(
        request_id=req.request_id, replica=0, arrival_time=sent, first_scheduled_time=nan,
        first_token_time=token_times[0], finish_time=token_times[-1],
        num_prompt_tokens=usage.get("prompt_tokens", req.num_prompt_tokens),
        num_output_tokens=usage.get("completion_tokens", len(token_times)),
        num_cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        num_preemptions=0, finish_reason=finish, token_times=token_times,
    )


async def run_load(url: str, spec: WorkloadSpec, *, model: str | None = None, max_concurrency: int | None = None,
                   timeout_s: float = 600.0) -> BenchResult:
    """Send the workload's requests at their arrival times (open loop) and collect what came back."""
    url = url.rstrip("/")
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        model = model or (await model_card(client, url))["id"]
        gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

        async def one(req: Request) -> RequestRecord | str:
            try:
                if gate is None:
                    return await _send(client, url, model, req, t0)
                async with gate:
                    return await _send(client, url, model, req, t0)
            except (httpx.HTTPError, json.JSONDecodeError) as err:
                return f"{type(err).__name__}: {err}"

        tasks = []
        t0 = time.perf_counter()
        for req in synthetic_requests(spec):
            delay = req.arrival_time - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(req)))
        outcomes = await asyncio.gather(*tasks)
    result = BenchResult([o for o in outcomes if isinstance(o, RequestRecord)])
    for o in outcomes:
        if isinstance(o, str):
            result.failures[o.split(":", 1)[0]] += 1
            result.first_error = result.first_error or o
    return result


_ROWS = (
    ("Request throughput (req/s)", "request_throughput", None),
    ("Output token throughput (tok/s)", "output_token_throughput", None),
    ("Goodput (req/s)", "goodput", None),
    ("TTFT p50 (ms)", "ttft_s", "p50"), ("TTFT p99 (ms)", "ttft_s", "p99"),
    ("TPOT p50 (ms)", "tpot_s", "p50"), ("TPOT p99 (ms)", "tpot_s", "p99"),
    ("ITL p50 (ms)", "itl_s", "p50"), ("ITL p99 (ms)", "itl_s", "p99"),
    ("E2E p50 (ms)", "e2e_s", "p50"), ("E2E p99 (ms)", "e2e_s", "p99"),
)


def format_comparison(measured: dict[str, Any], simulated: dict[str, Any], hardware: str) -> str:
    """Measured and simulated summaries of one workload, side by side."""
    def cell(summary: dict[str, Any], key: str, stat: str | None) -> str:
        value = summary.get(key)
        if stat is not None:
            value = None if value is None else value[stat]
            value = None if value is None else value * 1e3
        return "-" if value is None else f"{value:.2f}"

    rows = [[label, cell(measured, key, stat), cell(simulated, key, stat)] for label, key, stat in _ROWS]
    return render_table(rows, ("<34", ">14", ">14"), ["", "measured", "simulated"],
                        title=f"measured vs simulated on {hardware}", sep="")

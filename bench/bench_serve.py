"""Online serving: the highest request rate batchserve and a transformers baseline sustain with p99 TTFT < 2 s.

Both servers run the same random-weight "small" model (bench_engine.py's
~55M Llama shape, float32) in their own process and speak the same
OpenAI completions subset; `batchserve bench serve`'s load generator
(`run_load`) drives each at rising Poisson rates, and a server's sweep stops
at its first rate that misses the target (or fails requests).

The baselines are minimal transformers servers over the same app
(`openai_app`), streaming one chunk per token. "transformers-cb" (the one to
report) adds each request to transformers' own continuous batching
(`ContinuousBatchingManager`, paged KV cache, SDPA) as it arrives and streams
its tokens back through the manager's per-request result handler.
"transformers-fifo" runs requests one at a time, prefill then a
token-by-token decode loop with the HF KV cache: the floor any batching must
beat, kept for the earlier results. (`transformers serve` exists in
transformers 5, but its completions endpoint takes text prompts only and
needs a tokenizer, which a random-weight model has none of.)

    python bench/bench_serve.py                    # batchserve and transformers-cb sweeps, a few minutes
    python bench/bench_serve.py --baseline transformers-cb --baseline transformers-fifo
    python bench/bench_serve.py --rates 1,2,4 --seconds-per-rate 20
    python bench/bench_serve.py --itl-check        # sarathi's token budget keeps ITL flat (tiny model)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch
import transformers
from bench_engine import SHAPES
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from batchserve.entrypoints.openai.bench_client import run_load
from batchserve.metrics import SLO, summarize
from batchserve.workload import WorkloadSpec

TTFT_TARGET_S = 2.0
KV_CACHE_GIB = 1  # batchserve's --kv-cache-memory, and the size of transformers-cb's paged cache


# ---- the baseline servers -----------------------------------------------------------------------------

# A stream takes (prompt token ids, max_tokens) and yields each generated token id as it is sampled.
TokenStream = Callable[[list[int], int], AsyncIterator[int]]


def openai_app(vocab_size: int, stream: TokenStream, lifespan: Callable | None = None):
    """FastAPI app: /health, /v1/models and streaming /v1/completions, one SSE chunk per token, over `stream`."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"data": [{"id": "small", "vocab_size": vocab_size}]}

    @app.post("/v1/completions")
    async def completions(body: dict) -> StreamingResponse:
        async def events():
            n = 0
            async for _ in stream(body["prompt"], body["max_tokens"]):
                n += 1
                done = "length" if n == body["max_tokens"] else None
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': '', 'finish_reason': done}]})}\n\n"
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def load_model(model_dir: str) -> transformers.PreTrainedModel:
    """float32 with SDPA attention, as batchserve's server runs the same checkpoint."""
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                             attn_implementation="sdpa").eval()


def fifo_app(model_dir: str):
    """One request at a time, FIFO: prefill, then a token-by-token decode loop with the HF KV cache."""
    model = load_model(model_dir)
    jobs: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while True:
            ids, max_tokens, loop, out = jobs.get()
            with torch.inference_mode():
                res = model(torch.tensor([ids]), use_cache=True)
                for _ in range(max_tokens):
                    token = res.logits[0, -1].argmax()
                    loop.call_soon_threadsafe(out.put_nowait, int(token))
                    res = model(token.view(1, 1), past_key_values=res.past_key_values, use_cache=True)
            loop.call_soon_threadsafe(out.put_nowait, None)

    async def stream(prompt: list[int], max_tokens: int) -> AsyncIterator[int]:
        out: asyncio.Queue = asyncio.Queue()
        jobs.put((prompt, max_tokens, asyncio.get_running_loop(), out))
        while (token := await out.get()) is not None:
            yield token

    threading.Thread(target=worker, daemon=True).start()
    return openai_app(model.config.vocab_size, stream)


def batched_app(model_dir: str):
    """transformers' continuous batching: every request joins its ContinuousBatchingManager as it arrives.

    Greedy, no EOS, each request's own max_new_tokens, SDPA over its paged cache. The cache is batchserve's 1 GiB;
    the step budget is 2048 tokens, not batchserve's 8192, because its CPU attention mask is allocated as step
    tokens x cache tokens (2048 x 128k floats = 1 GiB here), and the workload's prompts are short enough that
    2048 rarely binds.
    """
    model = load_model(model_dir)
    cfg = model.config
    page = ContinuousBatchingConfig.page_size
    kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4  # K and V, float32
    cb_config = ContinuousBatchingConfig(num_blocks=KV_CACHE_GIB * 2**30 // (kv_bytes_per_token * page),
                                         max_batch_tokens=2048, max_requests_per_batch=256, auto_switch_to_flash=False)
    manager = model.init_continuous_batching(GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0),
                                             continuous_batching_config=cb_config)

    @asynccontextmanager
    async def running(_app) -> AsyncIterator[None]:
        """The manager's loop is a non-daemon thread: stop it with the server, or the process never exits."""
        with torch.inference_mode():  # the loop thread takes the caller's inference mode
            manager.warmup()  # builds the cache on this thread: built on the loop's, its CPU steps ran 5-10x slower
            manager.start()
        yield
        manager.stop(block=True, timeout=10)

    async def stream(prompt: list[int], max_tokens: int) -> AsyncIterator[int]:
        outputs: asyncio.Queue = asyncio.Queue()
        request_id = uuid.uuid4().hex
        manager.register_result_handler(request_id, outputs.put_nowait)  # called on this loop, once per step
        manager.add_request(prompt, request_id=request_id, max_new_tokens=max_tokens, eos_token_id=-1,
                            streaming=True)
        sent = 0
        while True:
            res = await outputs.get()
            if res.error is not None:
                raise RuntimeError(res.error)
            for token in res.generated_tokens[sent:]:  # each streamed output holds every token so far
                yield token
            sent = len(res.generated_tokens)
            if res.is_finished():
                return

    return openai_app(cfg.vocab_size, stream, running)


BASELINES = {"transformers-cb": batched_app, "transformers-fifo": fifo_app}


# ---- the sweep ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server {cmd} did not come up")


def sweep(name: str, url: str, rates: list[float], args: argparse.Namespace, vocab: int) -> list[dict]:
    rows = []
    for rate in rates:
        num_requests = max(args.min_requests, math.ceil(rate * args.seconds_per_rate))
        spec = WorkloadSpec(num_requests=num_requests, rate=rate, input_len=args.input_len,
                            output_len=args.output_len, vocab_size=vocab, seed=0)
        result = asyncio.run(run_load(url, spec))
        failed = sum(result.failures.values())
        s = summarize(result.records, slo=SLO(ttft_s=TTFT_TARGET_S)) if result.records else None
        p99 = s["ttft_s"]["p99"] if s else None
        ok = failed == 0 and p99 is not None and p99 < TTFT_TARGET_S
        rows.append({"server": name, "rate": rate, "num_requests": num_requests, "ok": ok, "failed": failed,
                     "metrics": s})
        print(f"{name:>17} rate {rate:5g}: " + (
            f"{s['request_throughput']:5.2f} req/s, {s['output_token_throughput']:6.0f} out tok/s, "
            f"TTFT p50 {s['ttft_s']['p50'] * 1e3:6.0f} ms p99 {p99 * 1e3:6.0f} ms, "
            f"TPOT p50 {s['tpot_s']['p50'] * 1e3:5.1f} ms, ITL p99 {s['itl_s']['p99'] * 1e3:6.1f} ms"
            if s else "no request finished") + (f", {failed} failed" if failed else "") + ("" if ok else "  <- miss"),
            flush=True)
        if not ok:
            break
    return rows


async def _itl_while_long_prompts_arrive(url: str) -> tuple[float, float]:
    """ITL p50 and max (ms) of one streaming request while four 1900-token prompts arrive."""
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        async def streamer() -> None:
            body = {"prompt": "x", "max_tokens": 150, "ignore_eos": True, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        times.append(time.perf_counter())

        async def long_prompts() -> None:
            await asyncio.sleep(0.1)
            for i in range(4):
                await c.post("/v1/completions", json={"prompt": [65 + i] * 1900, "max_tokens": 1})

        await asyncio.gather(streamer(), long_prompts())
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    return gaps[len(gaps) // 2] * 1e3, gaps[-1] * 1e3


def itl_check() -> None:
    """Sarathi's token budget against whole-prompt prefill (vllm preset), on the tiny model."""
    for flags in (["--scheduler", "vllm"], ["--scheduler", "sarathi", "--max-num-batched-tokens", "128",
                                            "--max-num-seqs", "64"]):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start([sys.executable, "-m", "batchserve", "serve", "--model", "tiny", "--no-prefix-caching", *flags,
                      "--port", str(port)], url)
        try:
            p50, worst = asyncio.run(_itl_while_long_prompts_arrive(url))
        finally:
            proc.terminate()
            proc.wait()
        print(f"tiny, {' '.join(flags)}: ITL of a streaming request p50 {p50:.1f} ms, max {worst:.1f} ms "
              "while four 1900-token prompts arrive", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="0.1,0.2,0.5,1,2,4,8,16,32,64", help="request rates to try, rising")
    parser.add_argument("--seconds-per-rate", type=float, default=10.0,
                        help="each rate sends this many seconds of arrivals...")
    parser.add_argument("--min-requests", type=int, default=8, help="...and at least this many requests")
    parser.add_argument("--input-len", default="uniform:16:64")
    parser.add_argument("--output-len", default="16")
    parser.add_argument("--json", help="write every point as JSON")
    parser.add_argument("--itl-check", action="store_true",
                        help="instead: ITL of a stream while long prompts arrive, sarathi budget vs whole prefills")
    parser.add_argument("--baseline", choices=sorted(BASELINES), action="append",
                        help="transformers servers to sweep after batchserve (repeatable; default transformers-cb)")
    parser.add_argument("--baseline-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        import uvicorn

        app = BASELINES[args.baseline[0]](args.baseline_server)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return
    if args.itl_check:
        itl_check()
        return
    rates = [float(r) for r in args.rates.split(",")]
    config_cls, model_cls, shape = SHAPES["small"]
    cfg = getattr(transformers, config_cls)(**shape, max_position_embeddings=2048)
    torch.manual_seed(0)
    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, cpu {platform.processor() or _cpu_model()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"model small (random weights, float32), {args.seconds_per_rate:g} s of arrivals per rate (at least "
          f"{args.min_requests} requests), input {args.input_len}, "
          f"output {args.output_len} tokens, Poisson arrivals; target p99 TTFT < {TTFT_TARGET_S:g} s")
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        getattr(transformers, model_cls)(cfg).save_pretrained(tmp)
        servers = {
            "batchserve": [sys.executable, "-m", "batchserve", "serve", "--model", tmp, "--skip-tokenizer-init",
                           "--dtype", "float32", "--kv-cache-memory", f"{KV_CACHE_GIB}GiB"],
        }
        for name in args.baseline or ["transformers-cb"]:
            servers[name] = [sys.executable, __file__, "--baseline-server", tmp, "--baseline", name]
        for name, cmd in servers.items():
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start([*cmd, "--port", str(port)], url)
            try:
                rows += sweep(name, url, rates, args, cfg.vocab_size)
            finally:
                proc.terminate()
                proc.wait()
    for name in servers:
        best = max((r for r in rows if r["server"] == name and r["ok"]), key=lambda r: r["rate"], default=None)
        print(f"{name}: highest rate with p99 TTFT < {TTFT_TARGET_S:g} s: " + (
            "none of those tried" if best is None else
            f"{best['rate']:g} req/s (achieved {best['metrics']['request_throughput']:.2f} req/s, "
            f"TPOT p50 {best['metrics']['tpot_s']['p50'] * 1e3:.0f} ms)"))
    print(f"bench wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    main()

"""The OpenAI-compatible HTTP server: routes, error shapes, disconnect handling.

Every failure a client can cause becomes a 4xx with OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`); overload is a 429 with
`Retry-After`; a client that disconnects has its requests aborted at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ... import __version__
from ...engine.llm_engine import LLMEngine
from ...lora import LoRARequest
from ...openai import (
    AnyRequest, APIError, ChatCompletionRequest, CompletionRequest, EngineInputs, ResponseBuilder, ServingContext,
    engine_error, engine_inputs, new_id, resolve_model_name, response_body, sse_event, sse_stream, validation_error,
)
from ...openai.structured import DEFAULT_TOOL_PARSER
from ...outputs import RequestOutput
from .engine_thread import AsyncEngine, EngineDead, Overloaded, RequestStream
from .limits import DEFAULT_MAX_REQUEST_BYTES
from .metrics import CONTENT_TYPE, ServerMetrics
from .middleware import APIKeyMiddleware, RequestSizeLimitMiddleware
from .tokenize_api import DetokenizeRequest, Tokenization, TokenizeRequest

RETRY_AFTER_S = 1


async def _watch_disconnect(raw: Request, stream: RequestStream) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass
    stream.abort()


@asynccontextmanager
async def _abort_on_disconnect(raw: Request, stream: RequestStream) -> AsyncIterator[None]:
    """While the body is produced, a client that goes away aborts the stream; so does leaving early."""
    watcher = asyncio.create_task(_watch_disconnect(raw, stream))
    try:
        yield
    finally:
        watcher.cancel()
        stream.abort()  # a no-op for requests that finished


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class OpenAIServer:
    """The routes' logic over one `AsyncEngine`, served under one or more model names."""

    def __init__(self, engine: AsyncEngine, model_names: Sequence[str], tool_call_parser: str,
                 lora_modules: Sequence[LoRARequest] = ()) -> None:
        self.engine = engine
        llm = engine.engine
        self.context = ServingContext(
            model_names=tuple(model_names), tokenizer=llm.tokenizer, max_model_len=llm.model_config.max_model_len,
            vocab_size=llm.model_config.vocab_size, defaults=llm.default_sampling_params,
            tool_parser=tool_call_parser, max_new_tokens=llm.default_max_tokens,
            lora_modules={lora.lora_name: lora for lora in lora_modules},
        )
        self.created = int(time.time())

    def models(self) -> dict:
        ctx = self.context

        def card(name: str, **extra: str) -> dict:
            return {"id": name, "object": "model", "created": self.created, "owned_by": "batchserve", **extra,
                    "max_model_len": ctx.max_model_len, "vocab_size": ctx.vocab_size}

        cards = [card(name) for name in ctx.model_names]
        cards += [card(name, root=lora.lora_path, parent=ctx.model_names[0]) for name, lora in ctx.lora_modules.items()]
        return {"object": "list", "data": cards}

    async def generate(self, req: AnyRequest, raw: Request) -> Response:
        """Convert and check the body (off the event loop: chat templates and tokenizing take time), then run it."""
        inputs = await asyncio.to_thread(engine_inputs, req, self.context)
        return await self._run(inputs, req, raw, "messages" if inputs.response.chat else "prompt")

    async def _run(self, inputs: EngineInputs, req: AnyRequest, raw: Request, prompt_field: str) -> Response:
        """Queue every prompt (all or none), then answer as a JSON body or as server-sent events."""
        job_id = new_id(inputs.response)
        prompt_index = {f"{job_id}-{i}": i for i in range(len(inputs.prompts))}
        stream = self.engine.stream()
        try:
            for (rid, i), prompt in zip(prompt_index.items(), inputs.prompts):
                await stream.add(rid, {"prompt_token_ids": prompt}, inputs.params, priority=req.priority,
                                 deadline_s=req.ttft_slo, lora_request=inputs.lora_request)
        except BaseException as err:
            stream.abort()
            raise _add_error(err, prompt_field, i, len(inputs.prompts)) from None
        if req.stream:
            builder = ResponseBuilder(inputs.response, prompt_index, streaming=True, id=job_id)
            return StreamingResponse(self._sse(builder, stream, raw), media_type="text/event-stream")
        async with _abort_on_disconnect(raw, stream):
            try:
                last: dict[str, RequestOutput] = {}
                async for out in stream:
                    last[out.request_id] = out
            except EngineDead as err:
                raise APIError(503, str(err), type="server_error") from None
        outputs = sorted(last.values(), key=lambda o: prompt_index[o.request_id])
        return JSONResponse(response_body(inputs.response, outputs, id=job_id))

    @staticmethod
    async def _sse(builder: ResponseBuilder, stream: RequestStream, raw: Request) -> AsyncIterator[str]:
        async with _abort_on_disconnect(raw, stream):
            try:
                async for chunk in sse_stream(builder, stream):
                    yield chunk
            except EngineDead as err:  # headers are sent: the error travels as an event
                yield sse_event(APIError(503, str(err), type="server_error").body())


def _add_error(err: BaseException, prompt_field: str, index: int, num_prompts: int) -> BaseException:
    """The client-facing error for a failed add (other exceptions pass through unchanged).

    An engine error that names no sampling field is about the prompt (too long, bad token ids).
    """
    if isinstance(err, Overloaded):
        return APIError(429, str(err), type="rate_limit_error", code="overloaded",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(err, EngineDead):
        return APIError(503, str(err), type="server_error")
    if isinstance(err, ValueError):
        api = engine_error(err, prompt_field)
        if num_prompts > 1:
            api.message = f"prompt {index}: {api.message}"
        return api
    return err


def build_app(llm: LLMEngine, model_name: str | Sequence[str], max_waiting: int | None = None, *,
              api_key: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
              tool_call_parser: str = DEFAULT_TOOL_PARSER, lora_modules: Sequence[LoRARequest] = ()) -> FastAPI:
    """The FastAPI app over `llm`; its lifespan starts and stops the engine thread (`app.state.engine`).

    `model_name` may be several names (aliases); the first is the one metrics and responses use by default.
    With `api_key`, every route but the probes (`middleware.OPEN_PATHS`) needs it as a bearer token; bodies
    over `max_request_bytes` get 413 before they are parsed. `lora_modules`: adapters listed in /v1/models and
    run when a body's `model` names one.
    """
    names = [model_name] if isinstance(model_name, str) else list(model_name)
    engine = AsyncEngine(llm, max_waiting=max_waiting)
    metrics = ServerMetrics(names[0], engine)
    engine.on_step = metrics.observe
    server = OpenAIServer(engine, names, tool_call_parser, lora_modules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="batchserve", lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(RequestSizeLimitMiddleware, max_bytes=max_request_bytes)
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)  # added last, so it runs first
    tokenization = Tokenization(server.context)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error(err.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(err.status_code, str(err.detail), type=kind, headers=err.headers))

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if engine.alive else 503)

    @app.get("/ping")
    @app.post("/ping")
    async def ping() -> Response:
        """vLLM's (and SageMaker's) liveness probe: /health by another name."""
        return await health()

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/v1/models")
    async def models() -> dict:
        return server.models()

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> dict:
        cards = {card["id"]: card for card in server.models()["data"]}
        return cards[resolve_model_name(model_id, server.context)]

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        return await tokenization.tokenize(req)

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        return await tokenization.detokenize(req)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        return await server.generate(req, raw)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request) -> Response:
        return await server.generate(req, raw)

    return app

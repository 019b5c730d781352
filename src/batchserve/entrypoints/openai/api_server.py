"""The OpenAI-compatible HTTP server: routes, error shapes, disconnect handling.

Every failure a client can cause becomes a 4xx with OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`); overload is a 429 with
`Retry-After`; a client that disconnects has its requests aborted at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...engine import PromptType
from ...engine.llm_engine import LLMEngine
from ...request import SamplingParams
from ...tokenizer import chat_prompt_ids
from .engine_thread import AsyncEngine, EngineDead, Overloaded, RequestStream
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (
    AnyRequest, APIError, ChatCompletionRequest, CompletionRequest, sampling_error, validation_error,
)
from .serving import ChatFormat, CompletionFormat, Format, Job, full_response, new_id, sse_event, sse_stream

RETRY_AFTER_S = 1
_REQUEST_PREFIX = re.compile(r"^request \S+: ")  # the engine's internal request id means nothing to the client


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
    """The routes' logic over one `AsyncEngine`, served under one model name."""

    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.engine, self.model_name = engine, model_name
        llm = engine.engine
        self.max_model_len = llm.model_config.max_model_len
        self.vocab_size = llm.model_config.vocab_size
        self.defaults = llm.default_sampling_params
        self.default_max_tokens = llm.default_max_tokens
        self.tokenizer = llm.tokenizer  # None with skip_tokenizer_init: token-id prompts only, no text out
        self.created = int(time.time())

    def models(self) -> dict:
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "batchserve",
                "max_model_len": self.max_model_len, "vocab_size": self.vocab_size}
        return {"object": "list", "data": [card]}

    def _check_model(self, req: AnyRequest) -> None:
        if req.model is not None and req.model != self.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def _require_tokenizer(self, param: str, needed: bool = True) -> None:
        """A 400 when `param` needs text handling and the server runs without a tokenizer."""
        if needed and self.tokenizer is None:
            raise APIError(400, f"{param} needs a tokenizer, and this server runs without one "
                                "(--skip-tokenizer-init): send token ids and no stop strings", param=param)

    async def completions(self, req: CompletionRequest, raw: Request) -> Response:
        self._check_model(req)
        self._require_tokenizer("stop", bool(req.stop))
        self._require_tokenizer("prompt", any(isinstance(p, str) for p in req.prompts()))
        params = req.sampling_params(self.defaults, req.requested_max_tokens, req.logprobs)
        return await self._run(CompletionFormat, req, raw, req.prompts(), params, req.logprobs, "prompt")

    async def chat(self, req: ChatCompletionRequest, raw: Request) -> Response:
        self._check_model(req)
        self._require_tokenizer("messages")
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in req.messages]
        try:
            ids = await asyncio.to_thread(chat_prompt_ids, self.tokenizer, messages)
        except Exception as err:  # a template's raise_exception (e.g. roles must alternate), or a jinja error
            raise APIError(400, f"messages cannot be rendered with the model's chat template: {err}",
                           param="messages") from None
        max_tokens = req.requested_max_tokens
        if max_tokens is None:
            if len(ids) >= self.max_model_len:
                raise APIError(400, f"the prompt is {len(ids)} tokens, longer than the model's context of "
                                    f"{self.max_model_len} tokens", param="messages")
            max_tokens = min(self.max_model_len - len(ids), self.default_max_tokens or self.max_model_len)
        params = req.sampling_params(self.defaults, max_tokens, req.num_logprobs)
        return await self._run(ChatFormat, req, raw, [{"prompt_token_ids": ids}], params, req.num_logprobs,
                               "messages")

    async def _run(self, fmt: Format, req: AnyRequest, raw: Request, prompts: Sequence[PromptType],
                   params: SamplingParams, num_logprobs: int | None, prompt_field: str) -> Response:
        """Queue every prompt (all or none), then answer as a JSON body or as server-sent events."""
        job = Job(model=self.model_name, prompt_index={}, n=params.n, num_logprobs=num_logprobs, stop=params.stop,
                  include_stop_str_in_output=params.include_stop_str_in_output, include_usage=req.include_usage,
                  id=new_id(fmt))
        stream = self.engine.stream()
        try:
            for i, prompt in enumerate(prompts):
                rid = f"{job.id}-{i}"
                job.prompt_index[rid] = i
                await stream.add(rid, prompt, params, priority=req.priority, deadline_s=req.ttft_slo)
        except BaseException as err:
            stream.abort()
            raise _add_error(err, prompt_field, i, len(prompts)) from None
        if req.stream:
            return StreamingResponse(self._sse(fmt, job, stream, raw), media_type="text/event-stream")
        async with _abort_on_disconnect(raw, stream):
            try:
                return JSONResponse(await full_response(fmt, job, stream))
            except EngineDead as err:
                raise APIError(503, str(err), type="server_error") from None

    @staticmethod
    async def _sse(fmt: Format, job: Job, stream: RequestStream, raw: Request) -> AsyncIterator[str]:
        async with _abort_on_disconnect(raw, stream):
            try:
                async for chunk in sse_stream(fmt, job, stream):
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
        api = sampling_error(ValueError(_REQUEST_PREFIX.sub("", str(err))))
        api.param = api.param or prompt_field
        if num_prompts > 1:
            api.message = f"prompt {index}: {api.message}"
        return api
    return err


def build_app(llm: LLMEngine, model_name: str, max_waiting: int | None = None) -> FastAPI:
    """The FastAPI app over `llm`; its lifespan starts and stops the engine thread (`app.state.engine`)."""
    engine = AsyncEngine(llm, max_waiting=max_waiting)
    metrics = ServerMetrics(model_name, engine)
    engine.on_step = metrics.observe
    server = OpenAIServer(engine, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="batchserve", lifespan=lifespan)
    app.state.engine = engine

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

    @app.get("/v1/models")
    async def models() -> dict:
        return server.models()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        return await server.completions(req, raw)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request) -> Response:
        return await server.chat(req, raw)

    return app

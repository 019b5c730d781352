"""Guards that run before any route: the API key (401) and the request body size (413).

Plain ASGI middleware rather than FastAPI dependencies, so a request that fails
them is answered before its body is read or parsed, and streaming responses and
disconnect detection pass through untouched.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...openai import APIError

OPEN_PATHS = frozenset({"/health", "/ping", "/metrics", "/version"})
"""Probes and scrapers that never send a key (as with vLLM); every other route needs it."""


async def _reject(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse(err.body(), status_code=err.status, headers=err.headers)(scope, receive, send)


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the time independent of the key's length as well as its content.
    return hashlib.sha256(key.encode()).digest()


class APIKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on every path but `OPEN_PATHS` (and CORS preflights)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("the API key must be non-empty")
        self.app = app
        self._digest = _digest(api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), self._digest):
            return await self.app(scope, receive, send)
        message = ("incorrect API key provided" if token else
                   "missing API key: send it as the header 'Authorization: Bearer <key>'")
        await _reject(APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}),
                      scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body outgrows the limit; FastAPI re-raises HTTP exceptions from body
    parsing, so the app's HTTPException handler answers it as a 413 in the OpenAI shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the server's limit of {limit} bytes "
                              "(--max-request-bytes)")


class RequestSizeLimitMiddleware:
    """Rejects bodies over `max_bytes` with 413: at once when Content-Length says so, else (chunked uploads,
    or a Content-Length that lies) as soon as the bytes received pass the limit, so at most `max_bytes` plus
    one chunk is ever held."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _reject(self._error(), scope, receive, send)
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:  # a route that streams while reading; nothing left to answer with
                raise
            await _reject(self._error(), scope, receive, send)

    def _error(self) -> APIError:
        return APIError(413, BodyTooLarge(self.max_bytes).detail)

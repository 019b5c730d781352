"""`POST /tokenize` and `/detokenize` in vLLM's shapes, so scripts that count or budget tokens work unchanged.

A chat is tokenized exactly as `/v1/chat/completions` would send it to the
engine (template rendered, then encoded without adding special tokens again),
so `count` equals that request's `usage.prompt_tokens`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ...openai import APIError, ChatMessage, ServingContext, render_chat, resolve_model_name, template_message
from ...tokenizer import Tokenizer

_STRICT = ConfigDict(extra="forbid", strict=True)


class TokenizeRequest(BaseModel):
    """Either a prompt (`add_special_tokens` defaults to true) or chat messages (defaults to false: the
    template already holds them), as vLLM's TokenizeCompletionRequest and TokenizeChatRequest."""

    model_config = _STRICT
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None


class DetokenizeRequest(BaseModel):
    model_config = _STRICT
    model: StrictStr | None = None
    tokens: list[StrictInt]


class Tokenization:
    """The two routes' logic over the served model's tokenizer (None with --skip-tokenizer-init)."""

    def __init__(self, context: ServingContext) -> None:
        self.context = context

    async def tokenize(self, req: TokenizeRequest) -> dict:
        tokenizer = self._check(req.model, "/tokenize")
        if req.prompt is not None and req.messages is not None:
            raise APIError(400, "send either prompt or messages, not both", param="messages")
        if req.prompt is None and req.messages is None:
            raise APIError(400, "prompt or messages is required", param="prompt")
        if req.prompt is not None:
            if req.add_generation_prompt is not None:
                raise APIError(400, "add_generation_prompt applies to messages only", param="add_generation_prompt")
            add_special = True if req.add_special_tokens is None else req.add_special_tokens
            ids = await asyncio.to_thread(tokenizer.encode, req.prompt, add_special_tokens=add_special)
        else:
            ids = await asyncio.to_thread(
                render_chat, tokenizer, [template_message(m) for m in req.messages],
                add_generation_prompt=req.add_generation_prompt is not False,
                add_special_tokens=bool(req.add_special_tokens))
        return {"count": len(ids), "max_model_len": self.context.max_model_len, "tokens": ids}

    async def detokenize(self, req: DetokenizeRequest) -> dict:
        tokenizer = self._check(req.model, "/detokenize")
        bad = next((i for i, t in enumerate(req.tokens) if not 0 <= t < tokenizer.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"tokens.{bad}: token id {req.tokens[bad]} is outside the tokenizer's vocabulary "
                                f"[0, {tokenizer.vocab_size})", param="tokens")
        # Special tokens are kept, so detokenize(tokenize(text)) gives back the text with its BOS, as in vLLM.
        return {"prompt": await asyncio.to_thread(tokenizer.decode, req.tokens, skip_special_tokens=False)}

    def _check(self, model: str | None, route: str) -> Tokenizer:
        resolve_model_name(model, self.context)
        if self.context.tokenizer is None:
            raise APIError(400, f"{route} needs a tokenizer, and this server runs without one "
                                "(--skip-tokenizer-init)")
        return self.context.tokenizer

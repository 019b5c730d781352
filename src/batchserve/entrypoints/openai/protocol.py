"""Request bodies of the OpenAI API as strict pydantic models, and their errors in OpenAI's shape.

Bounds live on the fields so a bad value is rejected before it reaches the
engine, with a 400 naming the field; unknown fields are rejected too (as the
OpenAI API does), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationInfo, field_validator

from ...request import SamplingParams

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's; chat defaults to the rest of the context
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


class APIError(Exception):
    """An error the client should see: HTTP status plus the OpenAI error body fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def sampling_error(err: ValueError) -> APIError:
    """A 400 for a SamplingParams or engine ValueError; its messages start with the offending field's name."""
    first = str(err).split(" ", 1)[0]
    return APIError(400, str(err), param=first if first in _SAMPLING_FIELDS else None)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields both endpoints share; names and bounds follow the OpenAI API plus vLLM's extensions."""

    model_config = _STRICT

    model: StrictStr | None = None
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="vLLM extension; -1 or 0 disables")
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=64)] | None = None
    stop_token_ids: Annotated[list[StrictInt], Field(max_length=64)] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1, description="lower runs first, with --policy priority")
    ttft_slo: float | None = Field(None, gt=0, le=86400, description="seconds to first token, for --policy edf")

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    def sampling_params(self, defaults: SamplingParams, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine's params: the model's defaults, overridden by what the request sets."""
        given: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("n", "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                      "frequency_penalty", "seed", "include_stop_str_in_output", "ignore_eos", "min_tokens",
                      "skip_special_tokens")
            if getattr(self, k) is not None
        }
        if self.top_k is not None:
            given["top_k"] = max(self.top_k, 0)
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        try:
            return replace(defaults, **given, max_tokens=max_tokens, logprobs=logprobs, stop=stop or [],
                           stop_token_ids=self.stop_token_ids or [])
        except ValueError as err:
            raise sampling_error(err) from None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions: a prompt (text, token ids, or a batch of either)."""

    prompt: StrictStr | TokenIds | Annotated[list[StrictStr], Field(min_length=1, max_length=256)] \
        | Annotated[list[TokenIds], Field(min_length=1, max_length=256)]
    max_tokens: int | None = Field(DEFAULT_COMPLETION_MAX_TOKENS, ge=1, description="null means the default, 16")
    logprobs: int | None = Field(None, ge=0, le=20)

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt of the batch."""
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]
        return list(p)


    @property
    def requested_max_tokens(self) -> int:
        return DEFAULT_COMPLETION_MAX_TOKENS if self.max_tokens is None else self.max_tokens


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    # Clients echo assistant turns back with fields we do not use (tool_calls, refusal...): ignore those.
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions: a conversation, rendered with the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, description="default: the rest of the context")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("needs logprobs set to true")
        return value

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


AnyRequest = Union[CompletionRequest, ChatCompletionRequest]


def validation_error(errors: Sequence[Any]) -> APIError:
    """A 400 for pydantic/FastAPI validation errors, naming the first offending field.

    Of a union's errors (one per member) the deepest is the member whose shape matched, so the telling one.
    """
    err = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
    kind, msg = err.get("type", ""), err.get("msg", "invalid value").removeprefix("Value error, ")
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {err.get('ctx', {}).get('error', msg)}")
    # Union members add their type to the location ("prompt.str"); keep field names and list indexes only.
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and (isinstance(x, int) or _FIELD_NAME.match(str(x)))
           and x not in _TYPE_TAGS]
    if not loc:
        what = "missing" if kind == "missing" else f"not a JSON object ({msg})"
        return APIError(400, f"the request body is {what}; send a JSON object")
    path = ".".join(loc)
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {path}", param=loc[0])
    if kind == "missing":
        return APIError(400, f"{path} is required", param=loc[0])
    return APIError(400, f"{path}: {msg}", param=loc[0])

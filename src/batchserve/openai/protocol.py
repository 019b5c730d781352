"""Request bodies of the OpenAI API (plus vLLM's extensions) as strict pydantic models.

Bounds live on the fields, so a bad value is rejected before anything is
queued, with every offending field named at once. The field policy follows
vLLM's: fields that cannot change the output (`store`, `metadata`,
`service_tier`, `user`, ...) are accepted and ignored with a debug log; the
ones that change it are implemented or rejected (`errors.UNSUPPORTED_FIELDS`),
never silently dropped.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationInfo, field_validator,
    model_validator,
)

from ..request import MAX_SEED

logger = logging.getLogger(__name__)

DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default for /v1/completions; chat defaults to the rest of the context."""
MAX_N = 128
MAX_LOGPROBS = 20
MAX_PROMPTS = 256
IGNORED_FIELDS = ("store", "metadata", "service_tier", "user", "modalities")
"""Accepted and ignored: they do not change what is generated (as in vLLM)."""

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
Number = float  # strict mode: an int is accepted, a bool or a string is not


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False
    """vLLM's: usage in every chunk, not only the last."""


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[StrictStr, Field(max_length=64)] = "response"
    description: StrictStr | None = None
    schema_: dict[StrictStr, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON that fits a schema."""

    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("type json_schema needs json_schema.schema")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: exactly one constraint on the output's language."""

    model_config = _STRICT
    json_: dict[StrictStr, Any] | StrictStr | None = Field(None, alias="json")
    regex: StrictStr | None = None
    choice: Annotated[list[StrictStr], Field(min_length=1)] | None = None
    grammar: StrictStr | None = None
    json_object: StrictBool | None = None


class _SamplingRequest(BaseModel):
    """Fields both endpoints share; names and bounds follow the OpenAI API plus vLLM's extensions."""

    model_config = _STRICT

    model: StrictStr | None = None
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=-1, le=2**31 - 1, description="vLLM extension; -1 or 0 disables")
    min_p: Number | None = Field(None, ge=0, le=1)
    presence_penalty: Number = Field(0.0, ge=-2, le=2)
    frequency_penalty: Number = Field(0.0, ge=-2, le=2)
    repetition_penalty: Number | None = Field(None, gt=0, le=100)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=64)] | None = None
    stop_token_ids: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(max_length=64)] | None = None
    include_stop_str_in_output: StrictBool = False
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = Field(0, ge=0)
    skip_special_tokens: StrictBool = True
    logit_bias: dict[StrictStr, Annotated[Number, Field(ge=-100, le=100)]] | None = Field(None, max_length=1024)
    prompt_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    truncate_prompt_tokens: StrictInt | None = Field(None, ge=1, description="vLLM: keep the prompt's last k tokens")
    echo: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[StrictStr, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: Annotated[list[StrictStr], Field(min_length=1)] | None = None
    guided_grammar: StrictStr | None = None
    priority: StrictInt = Field(0, ge=-(2**31), le=2**31 - 1, description="lower runs first, with --policy priority")
    ttft_slo: Number | None = Field(None, gt=0, le=86400, description="seconds to first token, for --policy edf")

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, body: Any) -> Any:
        if isinstance(body, dict) and any(k in body for k in IGNORED_FIELDS):
            logger.debug("ignoring fields that do not change the output: %s",
                         sorted(k for k in IGNORED_FIELDS if k in body))
            body = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
        return body

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = [k for k in value or () if not k.isdigit()]
        if bad:
            raise ValueError(f"keys must be token ids (decimal strings), got {bad[:5]}")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions: a prompt (text, token ids, or a batch of either)."""

    prompt: StrictStr | TokenIds | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)] \
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: StrictInt | None = Field(None, ge=1, description="default (or null): 16, OpenAI's")
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: StrictInt | None = Field(None, ge=1, le=MAX_N)
    add_special_tokens: StrictBool = True

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value != info.data.get("n", 1):
            raise ValueError("best_of other than n is not supported (it needs beam-style ranking)")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt of the batch."""
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]
        return list(p)

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs


class ContentPart(BaseModel):
    """A part of a message's content; only text parts reach a text-only model."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: StrictStr
    text: StrictStr | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text":
            raise ValueError(f"content part type {self.type!r} is not supported: this server serves a text-only "
                             "model; send text parts")
        if self.text is None:
            raise ValueError("a text part needs 'text'")
        return self


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: StrictStr
    arguments: StrictStr


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    # Clients echo assistant turns back with fields that do not reach a template (refusal, audio, annotations).
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None
    reasoning_content: StrictStr | None = None

    def text(self) -> str:
        """The content as one string: text parts joined by newlines, as vLLM renders them."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "\n".join(p.text or "" for p in self.content)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]
    description: StrictStr | None = None
    parameters: dict[StrictStr, Any] | None = None
    strict: StrictBool | None = None


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = _STRICT
    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions: a conversation, rendered with the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: StrictInt | None = Field(None, ge=1, description="default: the rest of the context")
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    add_special_tokens: StrictBool = False
    chat_template_kwargs: dict[StrictStr, Any] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    """Passed to the chat template (reasoning models' templates read it); others ignore it."""
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    """False: at most one call (`required` constrains the list to one; `auto` keeps the first)."""

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("needs logprobs set to true")
        return value

    @field_validator("continue_final_message")
    @classmethod
    def _continue_or_generate(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("add_generation_prompt"):
            raise ValueError("cannot be true together with add_generation_prompt; set add_generation_prompt false")
        return value

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


AnyRequest = Union[CompletionRequest, ChatCompletionRequest]


def parse_request(body: Any, chat: bool) -> AnyRequest:
    """A JSON body (already decoded) as a request model; raises `APIError` naming every offending field."""
    from pydantic import ValidationError

    from .errors import validation_error

    try:
        return (ChatCompletionRequest if chat else CompletionRequest).model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None

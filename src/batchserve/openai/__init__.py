"""The one OpenAI layer: request models, validation, conversion to engine inputs, response formatting.

Torch-free, and shared by `serve` (HTTP) and `run` (batch jobs): the same body
gets the same decision and the same output from both.
"""

from .errors import UNSUPPORTED_FIELDS, APIError, engine_error, sampling_error, validation_error
from .inputs import (
    EngineInputs, ResponseSpec, ServingContext, engine_inputs, render_chat, resolve_model_name, template_message,
)
from .protocol import AnyRequest, ChatCompletionRequest, ChatMessage, CompletionRequest, parse_request
from .responses import ResponseBuilder, new_id, response_body, sse_event, sse_stream, usage

__all__ = [
    "APIError", "AnyRequest", "engine_error", "ChatCompletionRequest", "ChatMessage", "CompletionRequest", "EngineInputs",
    "ResponseBuilder", "ResponseSpec", "ServingContext", "UNSUPPORTED_FIELDS", "engine_inputs", "new_id",
    "parse_request", "render_chat", "resolve_model_name", "response_body", "sampling_error", "sse_event", "sse_stream", "template_message", "usage",
    "validation_error",
]

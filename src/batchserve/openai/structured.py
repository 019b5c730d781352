"""Structured output and tool calling on the OpenAI surface: which grammar constrains a request, and the calls
in its output.

A request has at most one constraint, from `response_format`, vLLM's
`structured_outputs` (or its older `guided_*` fields), or a `tool_choice`
that forces a call. `required` constrains the output to a JSON list of calls
to the given functions and `{"type": "function", ...}` to one function's
arguments (as vLLM does), so such calls always parse and fit their schema;
`auto` lets the model choose and parses its text with the model family's
tool-call parser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from .errors import APIError
from .protocol import AnyRequest, ChatCompletionRequest, NamedToolChoice, StructuredOutputs
from .tool_parsers import TOOL_PARSERS, ParsedOutput

DEFAULT_TOOL_PARSER = "hermes"


@dataclass(frozen=True)
class ToolCalling:
    """How a request's output becomes tool calls."""

    mode: Literal["auto", "required", "named"]
    parser: str = DEFAULT_TOOL_PARSER
    function: str | None = None
    """The one function a named tool_choice calls."""
    parallel: bool = True
    """False: keep only the first call (`parallel_tool_calls: false`)."""

    def extract(self, text: str) -> ParsedOutput:
        """The user-facing content and the calls of a finished output."""
        parsed = self._parse(text)
        if not self.parallel:
            parsed.calls = parsed.calls[:1]
        return parsed

    def _parse(self, text: str) -> ParsedOutput:
        if self.mode == "auto":
            return TOOL_PARSERS[self.parser](text)
        try:
            value = json.loads(text)
        except ValueError:  # cut short by max_tokens: no call, the text stays
            return ParsedOutput(text or None)
        if self.mode == "named":
            return ParsedOutput(None, [(self.function, json.dumps(value, ensure_ascii=False))])
        return ParsedOutput(None, [(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in value])


def tool_calling(req: AnyRequest, parser: str) -> ToolCalling | None:
    """The request's tool-calling mode; None when its output is plain content."""
    if not isinstance(req, ChatCompletionRequest):
        return None
    if not req.tools:
        if req.tool_choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None
    choice = req.tool_choice or "auto"
    if choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        names = {t.function.name for t in req.tools}
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names the function {choice.function.name!r}, which is not in tools "
                                f"({', '.join(sorted(names))})", param="tool_choice")
        return ToolCalling("named", parser, choice.function.name, req.parallel_tool_calls)
    return ToolCalling(choice, parser, parallel=req.parallel_tool_calls)


def template_tools(req: AnyRequest) -> list[dict[str, Any]] | None:
    """Tools as chat templates take them (transformers' `tools` argument)."""
    if not isinstance(req, ChatCompletionRequest) or not req.tools:
        return None
    return [t.model_dump(by_alias=True, exclude_none=True) for t in req.tools]


def output_constraint(req: AnyRequest, tools: ToolCalling | None) -> dict[str, Any] | None:
    """The fields of the request's one `StructuredOutputsParams`; a 400 naming every source when several are set."""
    sources: dict[str, dict[str, Any]] = {}
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        sources["response_format"] = {"json_object": True}
    elif fmt is not None and fmt.type == "json_schema":
        sources["response_format"] = {"json": fmt.json_schema.schema_}
    if req.structured_outputs is not None:
        sources["structured_outputs"] = _structured_outputs(req.structured_outputs)
    for kind in ("json", "regex", "choice", "grammar"):
        value = getattr(req, f"guided_{kind}")
        if value is not None:
            sources[f"guided_{kind}"] = {kind: value}
    if tools is not None and tools.mode != "auto":
        sources["tool_choice"] = {"json": _tool_schema(req, tools)}
    if len(sources) > 1:
        raise APIError(400, f"give one output constraint, not {len(sources)}: {', '.join(sources)}",
                       param=next(iter(sources)))
    return next(iter(sources.values()), None)


def _structured_outputs(spec: StructuredOutputs) -> dict[str, Any]:
    given = {k: v for k, v in (("json", spec.json_), ("regex", spec.regex), ("choice", spec.choice),
                               ("grammar", spec.grammar), ("json_object", spec.json_object)) if v not in (None, False)}
    if len(given) != 1:
        raise APIError(400, f"structured_outputs needs exactly one of json, regex, choice, grammar, json_object; "
                            f"got {', '.join(given) or 'none'}", param="structured_outputs")
    return given


def _parameters(function: Any) -> dict[str, Any]:
    """A function's parameters schema for the grammar: arguments it does not declare are not allowed (unless the
    schema says so), since the function cannot take them and a small model would fill its tokens with them."""
    params = function.parameters or {"type": "object", "properties": {}}
    if params.get("type") == "object" and "additionalProperties" not in params:
        params = {**params, "additionalProperties": False}
    return params


def _tool_schema(req: ChatCompletionRequest, tools: ToolCalling) -> dict[str, Any]:
    """`required`: a non-empty list of {name, parameters} calls to the given functions; named: its arguments."""
    if tools.mode == "named":
        return next(_parameters(t.function) for t in req.tools if t.function.name == tools.function)
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                               "parameters": _parameters(t.function)},
              "required": ["name", "parameters"], "additionalProperties": False} for t in req.tools]
    schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    return schema if tools.parallel else {**schema, "maxItems": 1}

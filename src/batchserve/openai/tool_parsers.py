"""Tool calls out of a model's text, one parser per model family's format (vLLM's `--tool-call-parser` names).

Each parser splits a finished output into the text meant for the user and the
calls (function name plus arguments as a JSON string, OpenAI's shape). Text
that looks like a call but is not valid JSON stays content: a call is never
invented, and nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(function name, arguments as a JSON string) per call, in order."""


def _call(obj: object, arguments_keys: tuple[str, ...] = ("arguments", "parameters")) -> tuple[str, str] | None:
    """A {"name", "arguments"|"parameters"} object as a call; None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = next((obj[k] for k in arguments_keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as an encoded string already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def _content(text: str) -> str | None:
    text = text.strip()
    return text or None


_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> ParsedOutput:
    """Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks after optional text."""
    start = text.find("<tool_call>")
    if start < 0:
        return ParsedOutput(_content(text))
    calls = []
    for body in _HERMES_CALL.findall(text[start:]):
        try:
            call = _call(json.loads(body))
        except ValueError:
            call = None
        if call is None:
            return ParsedOutput(_content(text))
        calls.append(call)
    return ParsedOutput(_content(text[:start]), calls)


def parse_llama3_json(text: str) -> ParsedOutput:
    """Llama 3.x JSON tool calling: `{"name": ..., "parameters": {...}}`, several joined by `;`, maybe after
    `<|python_tag|>`."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return ParsedOutput(_content(text))
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except ValueError:
            return ParsedOutput(_content(text))
        call = _call(obj)
        if call is None:
            return ParsedOutput(_content(text))
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \n\t;":
            pos += 1
    return ParsedOutput(None, calls)


def parse_mistral(text: str) -> ParsedOutput:
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` after optional text."""
    start = text.find("[TOOL_CALLS]")
    if start < 0:
        return ParsedOutput(_content(text))
    try:
        objs = json.loads(text[start + len("[TOOL_CALLS]"):].strip())
    except ValueError:
        return ParsedOutput(_content(text))
    calls = [_call(o) for o in (objs if isinstance(objs, list) else [objs])]
    if not calls or any(c is None for c in calls):
        return ParsedOutput(_content(text))
    return ParsedOutput(_content(text[:start]), calls)


TOOL_PARSERS: dict[str, Callable[[str], ParsedOutput]] = {
    "hermes": parse_hermes, "llama3_json": parse_llama3_json, "mistral": parse_mistral,
}
"""`--tool-call-parser` choices."""

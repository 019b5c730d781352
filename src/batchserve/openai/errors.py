"""Errors a client should see, in OpenAI's shape, for the server (HTTP 4xx) and batch jobs (error entries)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..request import SamplingParams

_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}

UNSUPPORTED_FIELDS = {
    "tools": "tools need /v1/chat/completions",
    "tool_choice": "tools need /v1/chat/completions",
    "functions": "the deprecated functions field is not supported; send tools",
    "function_call": "the deprecated function_call field is not supported; send tool_choice",
    "suffix": "suffix (insertion) is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "use_beam_search": "beam search is not supported",
}
"""Fields of the OpenAI/vLLM API that would change the output and that batchserve does not implement."""


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


_REQUEST_PREFIX = re.compile(r"^request \S+: ")  # the engine's internal request id means nothing to a client


def engine_error(err: ValueError, prompt_field: str) -> APIError:
    """A 400 for a ValueError the engine raised adding a request: about the sampling field its first words
    name (`temperature must be ...`, `invalid structured_outputs.json: ...`), else about the prompt."""
    message = _REQUEST_PREFIX.sub("", str(err))
    words = re.findall(r"[a-z_]+", message)[:2]
    named = words[1] if words[:1] == ["invalid"] and len(words) > 1 else words[0] if words else None
    return APIError(400, message, param=named if named in _SAMPLING_FIELDS else prompt_field)


def validation_error(errors: Sequence[Any]) -> APIError:
    """One 400 for pydantic validation errors that names every offending field, not only the first.

    Of a union's errors (one per member) the deepest is the member whose shape matched, so the telling one:
    per top-level field only the deepest errors are kept.
    """
    if any(e.get("type") == "json_invalid" for e in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        detail = err.get("ctx", {}).get("error", err.get("msg", "invalid JSON"))
        return APIError(400, f"the request body is not valid JSON: {detail}")
    by_field: dict[str, list[tuple[list[str], dict]]] = {}
    for err in errors:
        loc = _clean_loc(err.get("loc", ()))
        if not loc:
            kind = err.get("type", "")
            what = "missing" if kind == "missing" else f"not a JSON object ({_message(err)})"
            return APIError(400, f"the request body is {what}; send a JSON object")
        by_field.setdefault(loc[0], []).append((loc, err))
    problems = []
    for entries in by_field.values():
        deepest = max(len(loc) for loc, _ in entries)
        seen = set()
        for loc, err in entries:
            text = _describe(loc, err)
            if len(loc) == deepest and text not in seen:
                seen.add(text)
                problems.append(text)
    first = next(iter(by_field))
    if len(problems) == 1:
        return APIError(400, problems[0], param=first)
    return APIError(400, f"{len(problems)} problems with the request: " + "; ".join(problems), param=first)


def _clean_loc(loc: Sequence[Any]) -> list[str]:
    """Field names and list indexes only: union members add their type to the location ("prompt.str")."""
    return [str(x) for x in loc if x != "body" and x not in _TYPE_TAGS
            and (isinstance(x, int) or str(x).isdigit() or _FIELD_NAME.match(str(x)))]


def _message(err: dict) -> str:
    return err.get("msg", "invalid value").removeprefix("Value error, ")


def _describe(loc: list[str], err: dict) -> str:
    path = ".".join(loc)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        reason = UNSUPPORTED_FIELDS.get(path)
        return f"{path}: {reason}" if reason else f"unrecognized request argument supplied: {path}"
    if kind == "missing":
        return f"{path} is required"
    return f"{path}: {_message(err)}"

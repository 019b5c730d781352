"""Engine outputs as OpenAI responses: whole JSON bodies, or server-sent-event chunks as tokens arrive.

Completions and chat differ only in shape (`text` vs `message`/`delta`, and
their logprobs layouts), so one collector serves both, each given a format.
Streamed deltas concatenate to exactly the non-streamed text: a tail that
could still be the start of a stop string (and so be cut) is held back until
the engine has decided. The server and batch jobs format through here, so a
body gets the same choices from both.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from ..outputs import CompletionOutput, Logprob, RequestOutput
from ..tokenizer import StopChecker
from .inputs import ResponseSpec

_CLIENT_FINISH_REASONS = ("stop", "length")  # "abort" only happens once the client is gone
_LOGPROB_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    """JSON has no -Infinity: an impossible token gets vLLM's floor instead."""
    return max(logprob, _LOGPROB_FLOOR)


@dataclass
class _Choice:
    """What of one completion has been sent so far."""

    index: int
    hold: StopChecker | None
    echo: str = ""
    """Text still to put before the first delta (echo)."""
    sent_text: int = 0
    sent_tokens: int = 0
    text_offset: int = 0
    done: bool = False

    def advance(self, c: CompletionOutput, streaming: bool, hold_all: bool = False) -> tuple[str, range]:
        """New text (minus a possible stop-string start while streaming; all of it while `hold_all` and
        unfinished: tool calls are parsed from the whole text) and the range of new token indices."""
        end = len(c.text)
        if streaming and c.finish_reason is None and hold_all:
            end = self.sent_text
        elif streaming and c.finish_reason is None and self.hold is not None:
            end -= self.hold.hold_back(c.text)
        delta = c.text[self.sent_text:end] if end > self.sent_text else ""
        self.sent_text = max(self.sent_text, end)
        new = range(self.sent_tokens, len(c.token_ids))
        self.sent_tokens = len(c.token_ids)
        delta, self.echo = self.echo + delta, ""
        return delta, new


def _call_id(response_id: str, choice: int, call: int) -> str:
    """A tool call id that is a function of the response: a resumed batch job writes the same ids."""
    return "call_" + hashlib.sha256(f"{response_id}:{choice}:{call}".encode()).hexdigest()[:24]


def _top(entry: dict[int, Logprob], token: int, k: int) -> tuple[float, list[tuple[str, float]]]:
    """The token's logprob and the top-k (token text, logprob) of one position."""
    ranked = sorted(entry.values(), key=lambda lp: lp.rank or 0)[:k]
    return _finite(entry[token].logprob), [(lp.decoded_token or "", _finite(lp.logprob)) for lp in ranked]


class CompletionFormat:
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    @staticmethod
    def logprobs(c: CompletionOutput, new: range, k: int, choice: _Choice,
                 prompt: list[tuple[int, dict[int, Logprob] | None]] = ()) -> dict[str, Any]:
        """OpenAI's completions layout; `prompt` (echo) puts the prompt's tokens first, the first without logprobs."""
        tokens, token_lps, tops, offsets = [], [], [], []
        positions = [(t, e) for t, e in prompt] + [(c.token_ids[i], c.logprobs[i]) for i in new]
        for token_id, entry in positions:
            if entry is None:
                token, sampled, top = "", None, None
            else:
                sampled, ranked = _top(entry, token_id, k)
                token, top = entry[token_id].decoded_token or "", dict(ranked)
            tokens.append(token)
            token_lps.append(sampled)
            tops.append(top)
            offsets.append(choice.text_offset)
            choice.text_offset += len(token)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, c: CompletionOutput, streaming: bool) -> dict[str, Any]:
        finish = c.finish_reason if c.finish_reason in _CLIENT_FINISH_REASONS else None
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
                "stop_reason": c.stop_reason}

    @staticmethod
    def first_chunk_choice(index: int) -> dict[str, Any] | None:
        return None


class ChatFormat:
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    @staticmethod
    def logprobs(c: CompletionOutput, new: range, k: int, choice: _Choice,
                 prompt: list[tuple[int, dict[int, Logprob] | None]] = ()) -> dict[str, Any]:
        content = []
        for i in new:
            sampled, top = _top(c.logprobs[i], c.token_ids[i], k)
            token = c.logprobs[i][c.token_ids[i]].decoded_token or ""
            content.append({
                "token": token, "logprob": sampled, "bytes": list(token.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
            })
        return {"content": content}

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, c: CompletionOutput, streaming: bool) -> dict[str, Any]:
        finish = c.finish_reason if c.finish_reason in _CLIENT_FINISH_REASONS else None
        body = {"content": text} if streaming else {"role": "assistant", "content": text}
        return {"index": index, "delta" if streaming else "message": body, "logprobs": logprobs,
                "finish_reason": finish, "stop_reason": c.stop_reason}

    @staticmethod
    def first_chunk_choice(index: int) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}


Format = type[CompletionFormat] | type[ChatFormat]


def new_id(spec: ResponseSpec) -> str:
    return _format(spec).id_prefix + uuid.uuid4().hex


def _format(spec: ResponseSpec) -> Format:
    return ChatFormat if spec.chat else CompletionFormat


def usage(outputs: Iterable[RequestOutput]) -> dict[str, Any]:
    prompt = completion = cached = 0
    for o in outputs:
        prompt += len(o.prompt_token_ids)
        completion += sum(len(c.token_ids) for c in o.outputs)
        cached += o.num_cached_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def prompt_logprobs_json(out: RequestOutput) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's `prompt_logprobs`: None for the first token, then {token id: {logprob, rank, decoded_token}}."""
    if out.prompt_logprobs is None:
        return None
    return [None if entry is None else {
        str(t): {"logprob": _finite(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
        for t, lp in entry.items()
    } for entry in out.prompt_logprobs]


class ResponseBuilder:
    """Turns one request's outputs (one `RequestOutput` per prompt) into choices, whole or streamed."""

    def __init__(self, spec: ResponseSpec, prompt_index: dict[str, int], streaming: bool, id: str = "",
                 created: int = 0) -> None:
        self.spec, self.fmt, self.streaming = spec, _format(spec), streaming
        self.prompt_index = prompt_index
        """Engine request id -> index of its prompt in the request."""
        self.id, self.created = id or new_id(spec), created or int(time.time())
        hold = StopChecker(spec.stop, spec.include_stop_str_in_output) if spec.stop and streaming else None
        num_prompts = len(prompt_index)
        self.choices = [_Choice(i, hold, self._echo(i // spec.n)) for i in range(num_prompts * spec.n)]
        self.latest: dict[str, RequestOutput] = {}

    def _echo(self, prompt: int) -> str:
        echo = self.spec.echo
        return echo[prompt] if echo and prompt < len(echo) else ""

    def choices_of(self, out: RequestOutput) -> list[dict[str, Any]]:
        """The choice dicts this output adds (streaming: only those with something new)."""
        self.latest[out.request_id] = out
        base = self.prompt_index[out.request_id] * self.spec.n
        result = []
        for c in out.outputs:
            choice = self.choices[base + c.index]
            if choice.done:
                continue
            first = choice.sent_tokens == 0 and choice.sent_text == 0
            text, new = choice.advance(c, self.streaming, hold_all=self.spec.tool_calling is not None)
            choice.done = c.finish_reason is not None
            if self.streaming and not (text or new or choice.done):
                continue
            lps = None
            if self.spec.num_logprobs is not None and c.logprobs is not None:
                prompt = self._echoed_prompt_logprobs(out) if first else []
                lps = self.fmt.logprobs(c, new, self.spec.num_logprobs, choice, prompt)
            body = self.fmt.choice(choice.index, text, lps, c, self.streaming)
            if self.spec.tool_calling is not None and choice.done:
                self._add_tool_calls(body, text, choice.index)
            if not self.spec.chat and self.spec.prompt_logprobs and choice.done:
                body["prompt_logprobs"] = prompt_logprobs_json(out)
            result.append(body)
        return result

    def _add_tool_calls(self, body: dict[str, Any], text: str, index: int) -> None:
        """Split a finished choice's text into content and `tool_calls` (ids derived from the response's id)."""
        parsed = self.spec.tool_calling.extract(text)
        if not parsed.calls:
            return
        message = body["delta" if self.streaming else "message"]
        message["content"] = parsed.content
        message["tool_calls"] = [
            {**({"index": k} if self.streaming else {}), "id": _call_id(self.id, index, k), "type": "function",
             "function": {"name": name, "arguments": arguments}}
            for k, (name, arguments) in enumerate(parsed.calls)
        ]
        if body["finish_reason"] == "stop" and self.spec.tool_calling.mode != "named":
            body["finish_reason"] = "tool_calls"  # OpenAI keeps "stop" when the request named the function

    def _echoed_prompt_logprobs(self, out: RequestOutput) -> list[tuple[int, dict[int, Logprob] | None]]:
        if self.spec.chat or not self.spec.echo or out.prompt_logprobs is None:
            return []
        return list(zip(out.prompt_token_ids, out.prompt_logprobs))

    def envelope(self, choices: list[dict[str, Any]], final: bool = False) -> dict[str, Any]:
        """A response (or chunk) body around `choices`; usage where the request asked for it."""
        body: dict[str, Any] = {
            "id": self.id, "object": self.fmt.chunk_object if self.streaming else self.fmt.object,
            "created": self.created, "model": self.spec.model, "choices": choices,
        }
        if not self.streaming or self.spec.include_usage:
            wanted = not self.streaming or final or self.spec.continuous_usage
            body["usage"] = usage(self.latest.values()) if wanted else None
        if self.spec.chat and self.spec.prompt_logprobs and not self.streaming:  # a chat has one prompt
            body["prompt_logprobs"] = prompt_logprobs_json(next(iter(self.latest.values())))
        return body


def response_body(spec: ResponseSpec, outputs: list[RequestOutput], id: str = "", created: int = 0) -> dict[str, Any]:
    """The non-streaming body of finished outputs (one per prompt, in prompt order): every choice, with usage."""
    builder = ResponseBuilder(spec, {o.request_id: i for i, o in enumerate(outputs)}, streaming=False, id=id,
                              created=created)
    choices = [ch for out in outputs for ch in builder.choices_of(out)]
    choices.sort(key=lambda ch: ch["index"])
    return builder.envelope(choices)


def sse_event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, allow_nan=False)}\n\n"


async def sse_stream(builder: ResponseBuilder, outputs: AsyncIterable[RequestOutput]) -> AsyncIterator[str]:
    """Server-sent events: a chunk per step with new text, then a usage chunk if asked, then [DONE]."""
    fmt = builder.fmt
    first = [ch for i in range(len(builder.choices)) if (ch := fmt.first_chunk_choice(i)) is not None]
    if first:
        yield sse_event(builder.envelope(first))
    async for out in outputs:
        choices = builder.choices_of(out)
        if choices:
            yield sse_event(builder.envelope(choices))
    if builder.spec.include_usage:
        yield sse_event(builder.envelope([], final=True))
    yield "data: [DONE]\n\n"

"""Engine outputs as OpenAI responses: whole JSON bodies, or server-sent-event chunks as tokens arrive.

Completions and chat differ only in shape (`text` vs `message`/`delta`, and
their logprobs layouts), so one streaming loop and one collector serve both,
each given a `Format`. Streamed deltas concatenate to exactly the
non-streamed text: a tail that could still be the start of a stop string (and
so be cut) is held back until the engine has decided.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ...outputs import CompletionOutput, RequestOutput
from ...tokenizer import StopChecker
from .engine_thread import RequestStream

_CLIENT_FINISH_REASONS = ("stop", "length")  # "abort" only happens once the client is gone
_LOGPROB_FLOOR = -9999.0


@dataclass
class Job:
    """What a response needs to know about the HTTP request besides the engine outputs."""

    model: str
    prompt_index: dict[str, int]
    """Engine request id -> index of its prompt in the HTTP request."""
    n: int
    num_logprobs: int | None
    stop: list[str]
    include_stop_str_in_output: bool
    include_usage: bool = False
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())


@dataclass
class _Choice:
    """What of one completion has been sent so far."""

    index: int
    hold: StopChecker | None
    sent_text: int = 0
    sent_tokens: int = 0
    text_offset: int = 0
    done: bool = False

    def advance(self, c: CompletionOutput, streaming: bool) -> tuple[str, range]:
        """New text (minus a possible stop-string start while streaming) and the range of new token indices."""
        end = len(c.text)
        if streaming and c.finish_reason is None and self.hold is not None:
            end -= self.hold.hold_back(c.text)
        delta = c.text[self.sent_text:end] if end > self.sent_text else ""
        self.sent_text = max(self.sent_text, end)
        new = range(self.sent_tokens, len(c.token_ids))
        self.sent_tokens = len(c.token_ids)
        return delta, new


def _top(c: CompletionOutput, i: int, k: int) -> tuple[float, list[tuple[str, float]]]:
    """The sampled token's logprob and the top-k (token text, logprob) at output position i."""
    entry = c.logprobs[i]
    sampled = entry[c.token_ids[i]].logprob
    ranked = sorted(entry.values(), key=lambda lp: lp.rank or 0)[:k]
    return _finite(sampled), [(lp.decoded_token or "", _finite(lp.logprob)) for lp in ranked]


def _finite(logprob: float) -> float:
    """JSON has no -Infinity: an impossible token gets vLLM's floor instead."""
    return max(logprob, _LOGPROB_FLOOR)


def _token_text(c: CompletionOutput, i: int) -> str:
    return c.logprobs[i][c.token_ids[i]].decoded_token or ""


class CompletionFormat:
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    @staticmethod
    def logprobs(c: CompletionOutput, new: range, k: int, choice: _Choice) -> dict[str, Any]:
        tokens, token_lps, tops, offsets = [], [], [], []
        for i in new:
            sampled, top = _top(c, i, k)
            token = _token_text(c, i)
            tokens.append(token)
            token_lps.append(sampled)
            tops.append(dict(top))
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
    def logprobs(c: CompletionOutput, new: range, k: int, choice: _Choice) -> dict[str, Any]:
        content = []
        for i in new:
            sampled, top = _top(c, i, k)
            token = _token_text(c, i)
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


def new_id(fmt: Format) -> str:
    return fmt.id_prefix + uuid.uuid4().hex


def _usage(finals: dict[str, RequestOutput]) -> dict[str, Any]:
    prompt = sum(len(o.prompt_token_ids) for o in finals.values())
    completion = sum(len(c.token_ids) for o in finals.values() for c in o.outputs)
    cached = sum(o.num_cached_tokens for o in finals.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class _Builder:
    """Turns the outputs of one HTTP request's stream into choices, for either response style."""

    def __init__(self, fmt: Format, job: Job, streaming: bool) -> None:
        self.fmt, self.job, self.streaming = fmt, job, streaming
        hold = StopChecker(job.stop, job.include_stop_str_in_output) if job.stop and streaming else None
        self.choices = [_Choice(i, hold) for i in range(len(job.prompt_index) * job.n)]
        self.finals: dict[str, RequestOutput] = {}

    def choices_of(self, out: RequestOutput) -> list[dict[str, Any]]:
        """The choice dicts this output adds (streaming: only those with something new)."""
        if out.finished:
            self.finals[out.request_id] = out
        base = self.job.prompt_index[out.request_id] * self.job.n
        result = []
        for c in out.outputs:
            choice = self.choices[base + c.index]
            if choice.done:
                continue
            text, new = choice.advance(c, self.streaming)
            choice.done = c.finish_reason is not None
            if self.streaming and not (text or new or choice.done):
                continue
            lps = None
            if self.job.num_logprobs is not None and c.logprobs is not None:
                lps = self.fmt.logprobs(c, new, self.job.num_logprobs, choice)
            result.append(self.fmt.choice(choice.index, text, lps, c, self.streaming))
        return result

    def envelope(self, choices: list[dict[str, Any]], usage: dict | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.job.id, "object": self.fmt.chunk_object if self.streaming else self.fmt.object,
            "created": self.job.created, "model": self.job.model, "choices": choices,
        }
        if not self.streaming or self.job.include_usage:
            body["usage"] = usage
        return body


async def full_response(fmt: Format, job: Job, stream: RequestStream) -> dict[str, Any]:
    """The non-streaming body: one choice per prompt and completion, with usage."""
    builder = _Builder(fmt, job, streaming=False)
    last: dict[str, RequestOutput] = {}
    async for out in stream:
        last[out.request_id] = out
    choices = [ch for out in last.values() for ch in builder.choices_of(out)]
    choices.sort(key=lambda ch: ch["index"])
    return builder.envelope(choices, usage=_usage(builder.finals))


def sse_event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, allow_nan=False)}\n\n"


async def sse_stream(fmt: Format, job: Job, stream: RequestStream) -> AsyncIterator[str]:
    """Server-sent events: a chunk per step with new text, then a usage chunk if asked, then [DONE]."""
    builder = _Builder(fmt, job, streaming=True)
    first = [ch for i in range(len(builder.choices)) if (ch := fmt.first_chunk_choice(i)) is not None]
    if first:
        yield sse_event(builder.envelope(first))
    async for out in stream:
        choices = builder.choices_of(out)
        if choices:
            yield sse_event(builder.envelope(choices))
    if job.include_usage:
        yield sse_event(builder.envelope([], usage=_usage(builder.finals)))
    yield "data: [DONE]\n\n"

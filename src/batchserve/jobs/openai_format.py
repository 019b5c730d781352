"""OpenAI request bodies to token ids and SamplingParams, and engine outputs to OpenAI Batch result lines.

Results are a pure function of the input line, the model and the job's seed:
a request without a `seed` gets one derived from its custom_id, so a resumed
job writes what an uninterrupted one would (`created` aside).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import fields
from typing import Any

from ..outputs import CompletionOutput, RequestOutput
from ..request import SamplingParams
from ..tokenizer import Tokenizer, chat_prompt_ids
from .batch_io import CHAT_URL, BadLine, BatchRequest

# Body fields passed to SamplingParams under the same name.
_SAMPLING_FIELDS = {
    "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "n", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "seed", "stop", "stop_token_ids", "ignore_eos",
    "include_stop_str_in_output", "skip_special_tokens",
}
# Accepted and ignored: they do not change what is generated.
_IGNORED_FIELDS = {"model", "user", "metadata", "store", "service_tier", "stream"}
_TYPES = {f.name: str(f.type) for f in fields(SamplingParams)}


def derived_seed(custom_id: str, job_seed: int) -> int:
    """A per-request seed that depends only on the custom_id and the job's seed."""
    digest = hashlib.sha256(f"{job_seed}:{custom_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def prepare(
    req: BatchRequest, tokenizer: Tokenizer, defaults: dict[str, Any], job_seed: int
) -> BatchRequest | BadLine:
    """Fill in token ids and sampling params, or say what is wrong with the body."""
    try:
        req.params = _sampling_params(req, defaults, job_seed)
        req.prompt_token_ids = _prompt_ids(req, tokenizer)
    except (ValueError, TypeError) as err:
        return BadLine(req.seq, req.line_no, req.custom_id, f"line {req.line_no}: {err}")
    return req


def _prompt_ids(req: BatchRequest, tokenizer: Tokenizer) -> list[int]:
    body = req.body
    if req.url == CHAT_URL:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError("'messages' must be a non-empty list of {\"role\": str, \"content\": str}")
        return chat_prompt_ids(tokenizer, messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        bad = [t for t in prompt if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {tokenizer.vocab_size})")
        return prompt
    raise ValueError("'prompt' must be a non-empty string or list of token ids (one prompt per request)")


def _sampling_params(req: BatchRequest, defaults: dict[str, Any], job_seed: int) -> SamplingParams:
    body = req.body
    chat = req.url == CHAT_URL
    known = _SAMPLING_FIELDS | _IGNORED_FIELDS | {"logprobs"} | (
        {"messages", "max_completion_tokens", "top_logprobs"} if chat else {"prompt"}
    )
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unsupported field(s) {', '.join(map(repr, unknown))} in body")
    if body.get("stream"):
        raise ValueError("'stream' must be false in a batch job")
    values = {**defaults, **{k: v for k, v in body.items() if k in _SAMPLING_FIELDS and v is not None}}
    if chat and body.get("max_completion_tokens") is not None:
        values["max_tokens"] = body["max_completion_tokens"]
    if chat and body.get("logprobs"):
        values["logprobs"] = body.get("top_logprobs") or 0
    elif not chat and body.get("logprobs") is not None:
        values["logprobs"] = body["logprobs"]
    for name, value in values.items():
        _check_type(name, value)
    values.setdefault("seed", derived_seed(req.custom_id, job_seed))
    return SamplingParams(**values)


def _check_type(name: str, value: Any) -> None:
    """SamplingParams checks ranges; this checks JSON types, so '"max_tokens": "5"' gets a clear message."""
    typ = _TYPES[name].replace(" | None", "")
    ok = {
        "int": type(value) is int,
        "float": type(value) in (int, float),
        "bool": type(value) is bool,
        "list[int]": isinstance(value, list) and all(type(v) is int for v in value),
        "list[str]": isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[typ]
    if not ok:
        raise ValueError(f"'{name}' must be {typ.replace('list[', 'a list of ').rstrip(']')}, got {value!r}")


# ---- results ---------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def error_record(bad: BadLine) -> dict[str, Any]:
    """The result line of an input line that could not run."""
    key = bad.custom_id if bad.custom_id is not None else f"line {bad.line_no}"
    return {
        "id": f"batch_req_{_short_hash(key)}",
        "custom_id": bad.custom_id,
        "response": None,
        "error": {"code": "invalid_request", "message": bad.message, "line": bad.line_no},
    }


def result_record(req: BatchRequest, out: RequestOutput, model: str) -> dict[str, Any]:
    """The result line of a finished request, its body shaped like the endpoint's response."""
    h = _short_hash(req.custom_id)
    chat = req.url == CHAT_URL
    completion_tokens = sum(len(c.token_ids) for c in out.outputs)
    body = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{h}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": req.body.get("model") or model,
        "choices": [_chat_choice(c) if chat else _completion_choice(c) for c in out.outputs],
        "usage": {
            "prompt_tokens": len(out.prompt_token_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(out.prompt_token_ids) + completion_tokens,
        },
    }
    return {
        "id": f"batch_req_{h}",
        "custom_id": req.custom_id,
        "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
        "error": None,
    }


def _completion_choice(c: CompletionOutput) -> dict[str, Any]:
    logprobs = None
    if c.logprobs is not None:
        logprobs = {
            "tokens": [step[t].decoded_token for t, step in zip(c.token_ids, c.logprobs)],
            "token_logprobs": [step[t].logprob for t, step in zip(c.token_ids, c.logprobs)],
            "top_logprobs": [{lp.decoded_token: lp.logprob for lp in step.values()} for step in c.logprobs],
        }
    return {"index": c.index, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish_reason}


def _chat_choice(c: CompletionOutput) -> dict[str, Any]:
    logprobs = None
    if c.logprobs is not None:
        logprobs = {"content": [
            {
                "token": step[t].decoded_token,
                "logprob": step[t].logprob,
                "top_logprobs": [{"token": lp.decoded_token, "logprob": lp.logprob} for lp in step.values()],
            }
            for t, step in zip(c.token_ids, c.logprobs)
        ]}
    return {
        "index": c.index,
        "message": {"role": "assistant", "content": c.text},
        "logprobs": logprobs,
        "finish_reason": c.finish_reason,
    }

"""Batch lines through the shared OpenAI layer: body to engine inputs, engine output to a result line.

The rules, limits and response shapes are `batchserve.openai`'s, the same the
server uses; what is particular to a job is here: one prompt per line, no
streaming, per-line error entries instead of HTTP errors, and results that are
a pure function of the input line, the model and the job's seed (a request
without a `seed` gets one derived from its custom_id, so a resumed job writes
what an uninterrupted one would, `created` aside).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..openai import APIError, ServingContext, engine_inputs, parse_request, response_body
from ..outputs import RequestOutput
from ..request import SamplingParams
from ..tokenizer import Tokenizer
from .batch_io import CHAT_URL, BadLine, BatchRequest

if TYPE_CHECKING:
    from .runner import JobConfig


def derived_seed(custom_id: str, job_seed: int) -> int:
    """A per-request seed that depends only on the custom_id and the job's seed."""
    digest = hashlib.sha256(f"{job_seed}:{custom_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def model_name(model: str) -> str:
    """The name a model answers to by default: 'tiny', or its directory's (file's) name, as `serve` uses."""
    return model if model == "tiny" else Path(model).name


def job_context(
    model: str, config: JobConfig, tokenizer: Tokenizer, max_model_len: int, vocab_size: int,
    generation_defaults: SamplingParams, max_new_tokens: int | None = None,
) -> ServingContext:
    """The serving context of a job: the model's limits and defaults under the job's flags (--max-tokens, ...)."""
    overrides = config.defaults
    sampling = {k: v for k, v in overrides.items() if k != "max_tokens"}
    return ServingContext(
        model_names=config.served_model_names or (model_name(model),), tokenizer=tokenizer,
        max_model_len=max_model_len, vocab_size=vocab_size, defaults=replace(generation_defaults, **sampling),
        default_max_tokens=overrides.get("max_tokens"), max_new_tokens=max_new_tokens,
        tool_parser=config.tool_call_parser, lora_modules={lora.lora_name: lora for lora in config.lora_modules},
    )


def prepare(req: BatchRequest, context: ServingContext, job_seed: int) -> BatchRequest | BadLine:
    """Fill in token ids, sampling params and the response spec, or say what is wrong with the body."""
    try:
        if req.body.get("stream"):
            raise APIError(400, "stream must be false in a batch job", param="stream")
        inputs = engine_inputs(parse_request(req.body, chat=req.url == CHAT_URL), context)
        if len(inputs.prompts) != 1:
            raise APIError(400, f"a batch line holds one prompt, got {len(inputs.prompts)}; write one line per "
                                "prompt", param="prompt")
    except APIError as err:
        return BadLine(req.seq, req.line_no, req.custom_id, f"line {req.line_no}: {err.message}", err.param)
    req.prompt_token_ids = inputs.prompts[0]
    req.params = inputs.params
    if req.params.seed is None:
        req.params = replace(req.params, seed=derived_seed(req.custom_id, job_seed))
    req.response = inputs.response
    req.lora_request = inputs.lora_request
    return req


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def error_record(bad: BadLine) -> dict[str, Any]:
    """The result line of an input line that could not run."""
    key = bad.custom_id if bad.custom_id is not None else f"line {bad.line_no}"
    return {
        "id": f"batch_req_{_short_hash(key)}",
        "custom_id": bad.custom_id,
        "response": None,
        "error": {"code": "invalid_request", "message": bad.message, "param": bad.param, "line": bad.line_no},
    }


def result_record(req: BatchRequest, out: RequestOutput) -> dict[str, Any]:
    """The result line of a finished request: its body is what the server returns for the same body."""
    h = _short_hash(req.custom_id)
    prefix = "chatcmpl" if req.response.chat else "cmpl"
    body = response_body(req.response, [out], id=f"{prefix}-{h}", created=int(time.time()))
    return {
        "id": f"batch_req_{h}",
        "custom_id": req.custom_id,
        "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
        "error": None,
    }

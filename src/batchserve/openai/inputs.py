"""An OpenAI request body to what the engine runs: prompt token ids, `SamplingParams`, and what the response needs.

One conversion for the server and for batch jobs, so the same body gets the
same decision and the same tokens in both. Every check that can fail runs
here, before anything is queued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..lora.request import LoRARequest
from ..request import SamplingParams, StructuredOutputsParams
from ..tokenizer import Tokenizer, chat_prompt_ids
from .errors import APIError, sampling_error
from .protocol import DEFAULT_COMPLETION_MAX_TOKENS, AnyRequest, ChatCompletionRequest, ChatMessage, CompletionRequest
from .structured import DEFAULT_TOOL_PARSER, ToolCalling, output_constraint, template_tools, tool_calling

_PASSED_THROUGH = ("n", "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "seed", "include_stop_str_in_output", "ignore_eos", "min_tokens",
                   "skip_special_tokens", "prompt_logprobs")


@dataclass(frozen=True)
class ServingContext:
    """What conversion needs to know about the model being served."""

    model_names: tuple[str, ...]
    """Names a body's `model` may give; the first is the one responses carry when a body gives none."""
    tokenizer: Tokenizer | None
    """None when running without a tokenizer: token-id prompts only, no text out."""
    max_model_len: int
    vocab_size: int
    defaults: SamplingParams = field(default_factory=SamplingParams)
    """The model's generation defaults (generation_config.json), under what a body sets."""
    default_max_tokens: int | None = None
    """max_tokens for a body that gives none; None: OpenAI's (16 for completions, the rest of the context
    for chat)."""
    max_new_tokens: int | None = None
    """The checkpoint's generation_config `max_new_tokens`: it caps a chat request's default (vLLM's rule)."""
    tool_parser: str = DEFAULT_TOOL_PARSER
    """How `tool_choice: auto` finds calls in the output (`--tool-call-parser`)."""
    compact_json: bool = True
    """JSON constraints allow no whitespace between tokens (vLLM's `disable_any_whitespace`): valid JSON all
    the same, and a small model cannot spend its tokens on indentation and blank lines."""
    lora_modules: Mapping[str, LoRARequest] = field(default_factory=dict)
    """Adapter name -> adapter: a body whose `model` names one runs under it (--lora-modules)."""


@dataclass
class ResponseSpec:
    """What formatting a response needs to know about the request besides the engine outputs."""

    chat: bool
    model: str
    n: int
    num_logprobs: int | None
    stop: list[str]
    include_stop_str_in_output: bool
    include_usage: bool = False
    continuous_usage: bool = False
    echo: list[str] | None = None
    """Per prompt, text the response starts with (completions' prompt, chat's continued message)."""
    prompt_logprobs: bool = False
    tool_calling: ToolCalling | None = None


@dataclass
class EngineInputs:
    prompts: list[list[int]]
    params: SamplingParams
    response: ResponseSpec
    lora_request: LoRARequest | None = None
    """The adapter the body's `model` names; None runs the base model."""


def engine_inputs(req: AnyRequest, ctx: ServingContext) -> EngineInputs:
    """Check and convert a parsed body; raises `APIError` saying what is wrong."""
    model = resolve_model_name(req.model, ctx)
    tools = tool_calling(req, ctx.tool_parser)
    constraint = output_constraint(req, tools)
    if isinstance(req, ChatCompletionRequest):
        prompts, echo = _chat_prompt(req, ctx)
    else:
        prompts, echo = _completion_prompts(req, ctx)
    if req.truncate_prompt_tokens is not None:
        prompts = [p[-req.truncate_prompt_tokens:] for p in prompts]
    params = _sampling_params(req, ctx, max(map(len, prompts)))
    if constraint is not None:
        if ctx.compact_json and ("json" in constraint or "json_object" in constraint):
            constraint = {**constraint, "disable_any_whitespace": True}
        try:
            params = replace(params, structured_outputs=StructuredOutputsParams(**constraint))
        except ValueError as err:
            raise APIError(400, str(err), param="structured_outputs") from None
    spec = ResponseSpec(
        chat=isinstance(req, ChatCompletionRequest), model=model, n=req.n, num_logprobs=req.num_logprobs,
        stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output,
        include_usage=req.include_usage, continuous_usage=req.continuous_usage, echo=echo,
        prompt_logprobs=req.prompt_logprobs is not None, tool_calling=tools,
    )
    if isinstance(req, CompletionRequest) and req.echo and req.logprobs is not None:
        params = replace(params, prompt_logprobs=params.prompt_logprobs or req.logprobs)
    return EngineInputs(prompts, params, spec, ctx.lora_modules.get(model))


def resolve_model_name(requested: str | None, ctx: ServingContext) -> str:
    """The name a response carries: the one requested if served (an alias included), else the first; 404 for
    a name this server does not serve."""
    if requested is None:
        return ctx.model_names[0]
    if requested not in ctx.model_names and requested not in ctx.lora_modules:
        names = ", ".join(map(repr, [*ctx.model_names, *ctx.lora_modules]))
        raise APIError(404, f"the model {requested!r} does not exist; this server serves {names}", param="model",
                       code="model_not_found")
    return requested


def _tokenizer(ctx: ServingContext, param: str) -> Tokenizer:
    if ctx.tokenizer is None:
        raise APIError(400, f"{param} needs a tokenizer, and the model runs without one (--skip-tokenizer-init): "
                            "send token ids, no stop strings and no echo", param=param)
    return ctx.tokenizer


def _completion_prompts(req: CompletionRequest, ctx: ServingContext) -> tuple[list[list[int]], list[str] | None]:
    if req.stop:
        _tokenizer(ctx, "stop")
    prompts = []
    for p in req.prompts():
        if isinstance(p, str):
            prompts.append(_tokenizer(ctx, "prompt").encode(p, add_special_tokens=req.add_special_tokens))
        else:
            _check_vocab(p, ctx, "prompt")
            prompts.append(list(p))
    echo = None
    if req.echo:
        tok = _tokenizer(ctx, "echo")
        echo = [p if isinstance(p, str) else tok.decode(p, skip_special_tokens=False) for p in req.prompts()]
    return prompts, echo


def _chat_prompt(req: ChatCompletionRequest, ctx: ServingContext) -> tuple[list[list[int]], list[str] | None]:
    tok = _tokenizer(ctx, "messages")
    messages = [template_message(m) for m in req.messages]
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", req.reasoning_effort)
    if req.tools:
        kwargs["tools"] = template_tools(req)
    ids = render_chat(tok, messages, add_generation_prompt=req.add_generation_prompt,
                      continue_final_message=req.continue_final_message, add_special_tokens=req.add_special_tokens,
                      **kwargs)
    last = req.messages[-1]
    echo = [last.text()] if req.echo and last.role == "assistant" else None
    return [ids], echo


def render_chat(tokenizer: Tokenizer, messages: list[dict[str, Any]], **options: Any) -> list[int]:
    """`chat_prompt_ids` with a template's failure (its raise_exception, a jinja error) as a 400."""
    try:
        return chat_prompt_ids(tokenizer, messages, **options)
    except Exception as err:
        raise APIError(400, f"messages cannot be rendered with the model's chat template: {err}",
                       param="messages") from None


def template_message(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: tool calls with their arguments parsed, as transformers passes them."""
    msg: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name is not None:
        msg["name"] = m.name
    if m.tool_calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": c.type, "function": {"name": c.function.name,
                                                      "arguments": _arguments(c.function.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        msg["tool_call_id"] = m.tool_call_id
    if m.reasoning_content is not None:
        msg["reasoning_content"] = m.reasoning_content
    return msg


def _arguments(text: str) -> Any:
    """A JSON object's dict (templates iterate over it), or the string as sent when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _check_vocab(ids: list[int], ctx: ServingContext, param: str) -> None:
    bad = [t for t in ids if t >= ctx.vocab_size]
    if bad:
        raise APIError(400, f"{param}: token ids {bad[:5]} are outside the vocabulary [0, {ctx.vocab_size})",
                       param=param)


def _max_tokens(req: AnyRequest, ctx: ServingContext, prompt_len: int) -> int:
    given = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        given = req.max_completion_tokens
    if given is not None:
        return given
    if ctx.default_max_tokens is not None:
        return ctx.default_max_tokens
    if isinstance(req, CompletionRequest):
        return DEFAULT_COMPLETION_MAX_TOKENS
    if prompt_len >= ctx.max_model_len:
        raise APIError(400, f"the prompt is {prompt_len} tokens, longer than the model's context of "
                            f"{ctx.max_model_len} tokens", param="messages")
    return min(ctx.max_model_len - prompt_len, ctx.max_new_tokens or ctx.max_model_len)


def _sampling_params(req: AnyRequest, ctx: ServingContext, prompt_len: int) -> SamplingParams:
    """The engine's params: the model's defaults, overridden by what the request sets."""
    given: dict[str, Any] = {k: getattr(req, k) for k in _PASSED_THROUGH if getattr(req, k) is not None}
    if req.top_k is not None:
        given["top_k"] = max(req.top_k, 0)
    if req.logit_bias:
        bias = {int(k): float(v) for k, v in req.logit_bias.items()}
        _check_vocab(list(bias), ctx, "logit_bias")
        given["logit_bias"] = bias
    if req.stop_token_ids:
        _check_vocab(req.stop_token_ids, ctx, "stop_token_ids")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    try:
        return replace(ctx.defaults, **given, max_tokens=_max_tokens(req, ctx, prompt_len),
                       logprobs=req.num_logprobs, stop=stop or [], stop_token_ids=req.stop_token_ids or [])
    except ValueError as err:
        raise sampling_error(err) from None

"""The input side: prompts to token ids, parameter checks, generation defaults and the `n` fan-out.

Everything a prompt needs before the scheduler sees it happens here, so the
engine below works on token ids and typed `Request`s only (vLLM v1's input
processor), and each constrained request gets its compiled grammar here, so
a bad schema fails at add time. Torch-free: it needs a tokenizer, two facts
about the model and, for structured outputs, a grammar manager.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..request import MAX_SEED, Request, SamplingParams
from ..tokenizer import Tokenizer

if TYPE_CHECKING:  # llguidance stays out of the torch-free engine import
    from ..structured_output import StructuredOutputManager

PromptType = Union[str, Sequence[int], dict]
"""A string, a list of token ids, or a {"prompt": ...} / {"prompt_token_ids": [...]} dict."""

_GENERATION_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_config(model_path: Path | None) -> dict[str, Any]:
    """A checkpoint directory's generation_config.json; {} for none (tiny, a GGUF file, a directory without one)."""
    path = None if model_path is None else model_path / "generation_config.json"
    if path is None or not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def generation_defaults(config: Mapping[str, Any]) -> SamplingParams:
    """The params used when a request gives none: generation_config's sampling fields and max_new_tokens.

    max_new_tokens becomes max_tokens, as in vLLM; a request that sets max_tokens wins.
    """
    max_tokens = {"max_tokens": config["max_new_tokens"]} if config.get("max_new_tokens") is not None else {}
    if config.get("do_sample") is False:
        return SamplingParams(temperature=0.0, **max_tokens)
    return SamplingParams(**{k: config[k] for k in _GENERATION_FIELDS if config.get(k) is not None}, **max_tokens)


@dataclass(frozen=True)
class ProcessedPrompt:
    """One prompt ready for the engine: its text (if given as text), token ids and one request per completion."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]


class InputProcessor:
    """Turns (prompt, params) into validated child requests; without a tokenizer prompts must be token ids."""

    def __init__(
        self, tokenizer: Tokenizer | None, vocab_size: int, eos_token_ids: Sequence[int],
        structured_output: StructuredOutputManager | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.structured_output = structured_output

    def get_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this engine was built with skip_tokenizer_init=True: it has no tokenizer")
        return self.tokenizer

    def encode(self, prompt: PromptType) -> list[int]:
        """Token ids of a string, a token-id list, or a {"prompt": ...} / {"prompt_token_ids": [...]} dict."""
        if isinstance(prompt, str):
            return self.get_tokenizer().encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return self.encode(list(prompt["prompt_token_ids"]))
            if "prompt" in prompt:
                return self.get_tokenizer().encode(prompt["prompt"])
            raise ValueError(f"a prompt dict needs 'prompt' or 'prompt_token_ids', got keys {sorted(prompt)}")
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            self._check_vocab("token ids", prompt)
            return list(prompt)
        raise TypeError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")

    def process(
        self, request_id: str, prompt: PromptType, params: SamplingParams, *, arrival_time: float, priority: int = 0,
        deadline: float | None = None,
    ) -> ProcessedPrompt:
        """Tokenize and check a prompt, then fan it out into `params.n` child requests (each with its grammar)."""
        ids = self.encode(prompt)
        self._check_vocab("stop_token_ids", params.stop_token_ids)  # the sampler indexes logits with them
        self._check_vocab("logit_bias token ids", list(params.logit_bias or ()))
        text = prompt if isinstance(prompt, str) else prompt.get("prompt") if isinstance(prompt, dict) else None
        children = self._fan_out(request_id, ids, params, arrival_time, priority, deadline)
        if params.structured_outputs is not None:
            if self.structured_output is None:
                raise ValueError("structured_outputs need a tokenizer; this engine has none (skip_tokenizer_init)")
            for child in children:
                self.structured_output.add_request(child)
        return ProcessedPrompt(request_id, text, ids, children)

    def _fan_out(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, arrival_time: float, priority: int,
        deadline: float | None,
    ) -> list[Request]:
        """One request per completion: ids `id#k` when n > 1, seed + k each, the model's EOS as stop tokens."""
        stop_ids = list(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids += [t for t in self.eos_token_ids if t not in stop_ids]
        children = []
        for k in range(params.n):
            seed = None if params.seed is None else (params.seed + k) % (MAX_SEED + 1)
            child_params = replace(params, stop_token_ids=stop_ids, seed=seed, n=1)
            children.append(Request(
                request_id if params.n == 1 else f"{request_id}#{k}", prompt_ids, child_params,
                arrival_time=arrival_time, priority=priority, deadline=deadline,
            ))
        return children

    def _check_vocab(self, what: str, token_ids: Sequence[int]) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"{what} {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

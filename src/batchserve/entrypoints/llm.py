"""The offline API: `LLM(model).generate(prompts, params)`, shaped like vLLM's."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..engine import PromptType
from ..engine.llm_engine import LLMEngine
from ..outputs import RequestOutput
from ..progress import Progress
from ..request import SamplingParams
from ..tokenizer import Tokenizer, chat_prompt_ids


class LLM:
    """A model with a paged KV cache, continuous batching, prefix caching and chunked prefill.

    `model` is a local Hugging Face directory, a .gguf file or "tiny" (built-in random weights,
    byte tokenizer: its text is noise, for smoke tests and benchmarks). Keyword
    arguments are those of `LLMEngine`.
    """

    def __init__(self, model: str = "tiny", **engine_args: Any) -> None:
        self.llm_engine = LLMEngine(model, **engine_args)
        self.model_config = self.llm_engine.model_config
        self.scheduler = self.llm_engine.scheduler
        self.executor = self.llm_engine.executor
        self.engine = self.llm_engine.engine
        self.default_sampling_params = self.llm_engine.default_sampling_params
        self._counter = 0

    def get_tokenizer(self) -> Tokenizer:
        return self.llm_engine.get_tokenizer()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One result per prompt, in order. Prompts are strings, token-id lists or {"prompt_token_ids": [...]}."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.default_sampling_params
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts; give one or one each")
        engine = self.llm_engine
        ids = []
        try:
            for i, (prompt, params) in enumerate(zip(prompts, params_list)):
                self._counter += 1
                ids.append(str(self._counter))
                try:
                    engine.add_request(ids[-1], prompt, params)
                except ValueError as err:
                    raise ValueError(f"prompt {i}: {err}") from None
        except BaseException:
            for rid in ids:  # nothing of a rejected call stays queued
                engine.abort_request(rid)
            raise
        results = self._run(set(ids), use_tqdm)
        return [results[rid] for rid in ids]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's own chat template, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts = [{"prompt_token_ids": chat_prompt_ids(tokenizer, conv)} for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: set[str], use_tqdm: bool) -> dict[str, RequestOutput]:
        engine = self.llm_engine
        results: dict[str, RequestOutput] = {}
        with Progress("generating", len(ids), enabled=use_tqdm and len(ids) > 1) as progress:
            t0 = time.perf_counter()
            tokens0 = engine.stats().generation_tokens
            while engine.has_unfinished():
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out
                tokens = engine.stats().generation_tokens - tokens0
                elapsed = time.perf_counter() - t0
                progress.update(len(results), f"{tokens / max(elapsed, 1e-9):.0f} output tok/s")
        return results

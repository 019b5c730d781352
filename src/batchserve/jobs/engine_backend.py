"""The real engine as a job backend: an `LLMEngine` behind `add` / `step` / `prefix_ready`."""

from __future__ import annotations

from typing import Any

from ..engine.llm_engine import LLMEngine
from ..openai import ServingContext
from ..tokenizer import Tokenizer, load_tokenizer
from .batch_io import BatchRequest
from .openai_format import job_context
from .runner import Finished, JobConfig, Summary, run_job


class EngineBackend:
    """Tracks which queued requests have computed their prompt, for the runner's prefix gating."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.block_size = engine.scheduler.kv.block_size
        self._live: dict[str, BatchRequest] = {}
        self._prefilling: set[str] = set()

    def add(self, req: BatchRequest) -> None:
        self.engine.add_request(req.custom_id, req.prompt_token_ids, req.params, lora_request=req.lora_request)
        self._live[req.custom_id] = req
        self._prefilling.add(req.custom_id)

    def step(self) -> list[Finished]:
        finished = []
        for out in self.engine.step():
            if out.finished or any(c.token_ids for c in out.outputs):
                self._prefilling.discard(out.request_id)
            if out.finished:
                finished.append((self._live.pop(out.request_id), out))
        return finished

    def prefix_ready(self, custom_id: str) -> bool:
        return custom_id not in self._prefilling

    def num_unfinished(self) -> int:
        return len(self._live)

    def counters(self) -> dict[str, int]:
        s = self.engine.stats()
        return {
            "prefix_cache_queries": s.prefix_cache_queries,
            "prefix_cache_hits": s.prefix_cache_hits,
            "computed_prompt_tokens": s.computed_prompt_tokens,
            "generation_tokens": s.generation_tokens,
        }


def engine_context(engine: LLMEngine, tokenizer: Tokenizer, model: str, config: JobConfig) -> ServingContext:
    """The job's serving context from the engine that runs it: its context length, vocabulary and defaults."""
    mc = engine.model_config
    return job_context(model, config, tokenizer, mc.max_model_len, mc.vocab_size, engine.default_sampling_params,
                       engine.default_max_tokens)


def local_job(
    input_path: str, output_path: str, model: str, engine_args: dict[str, Any], config: JobConfig, quiet: bool = False,
) -> Summary:
    """Run (or resume) a job on one engine in this process."""
    tokenizer = load_tokenizer(model)
    return run_job(input_path, output_path, lambda: EngineBackend(LLMEngine(model, **engine_args)),
                   lambda backend: engine_context(backend.engine, tokenizer, model, config), config, quiet)

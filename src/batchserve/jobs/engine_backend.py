"""The real engine as a job backend: an `LLMEngine` behind `add` / `step` / `prefix_ready`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from ..calibration.device import WEIGHT_DTYPES, device_name, measure_peaks
from ..engine.llm_engine import LLMEngine
from ..openai import ServingContext
from ..tokenizer import Tokenizer, load_tokenizer
from .batch_io import BatchRequest, Done
from .measurements import StepLog
from .openai_format import job_context
from .runner import Backend, Eta, Finished, JobConfig, Summary, run_job

COUNTERS = ("prefix_cache_queries", "prefix_cache_hits", "computed_prompt_tokens", "generation_tokens",
            "spec_decode_num_proposals", "spec_decode_num_drafts", "spec_decode_num_draft_tokens",
            "spec_decode_num_accepted_tokens")
"""The engine's counters a job reads (`Backend.counters`), named as the `EngineStats` fields they come from."""


class EngineBackend:
    """Tracks which queued requests have computed their prompt, for the runner's prefix gating, and logs
    every step and completion for estimates (`log`)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.block_size = engine.scheduler.kv.block_size
        self._live: dict[str, BatchRequest] = {}
        self._prefilling: set[str] = set()
        self.log = StepLog(device_name(engine.device), WEIGHT_DTYPES[engine.model.dtype], engine.executor.attention)
        engine.step_observer = self.log.observe

    @functools.cached_property
    def peaks(self) -> tuple[float, float]:
        """This device's (matmul FLOP/s, memory bytes/s) in the engine's dtype and GEMM kernel, as `calibrate`
        measures them (a fraction of a second, once)."""
        return measure_peaks(self.engine.device, self.engine.model.dtype, packed=self.engine.model.prepacked)

    def add(self, req: BatchRequest) -> None:
        self.engine.add_request(req.custom_id, req.prompt_token_ids, req.params, lora_request=req.lora_request)
        self._live[req.custom_id] = req
        self._prefilling.add(req.custom_id)

    def step(self) -> list[Finished]:
        finished = []
        t = time.perf_counter()
        outputs = self.engine.step()
        # a step's share of the loop: the call's wall time, or with async scheduling (a call applies one step and
        # runs the next) the step's own span, launch to result
        self.log.timed(time.perf_counter() - t, overlapped=self.engine.engine.overlaps_steps)
        for out in outputs:
            if out.finished or any(c.token_ids for c in out.outputs):
                self._prefilling.discard(out.request_id)
            if out.finished:
                req = self._live.pop(out.request_id)
                self.log.finished(req, out)
                finished.append((req, out))
        return finished

    def prefix_ready(self, custom_id: str) -> bool:
        return custom_id not in self._prefilling

    def num_unfinished(self) -> int:
        return len(self._live)

    def counters(self) -> dict[str, int]:
        stats = self.engine.stats()
        return {name: getattr(stats, name) for name in COUNTERS}


def engine_context(engine: LLMEngine, tokenizer: Tokenizer, model: str, config: JobConfig) -> ServingContext:
    """The job's serving context from the engine that runs it: its context length, vocabulary and defaults."""
    mc = engine.model_config
    return job_context(model, config, tokenizer, mc.max_model_len, mc.vocab_size, engine.default_sampling_params,
                       engine.default_max_tokens)


def local_job(
    input_path: str, output_path: str, model: str, engine_args: dict[str, Any], config: JobConfig, quiet: bool = False,
    make_backend: Callable[[], EngineBackend] | None = None, make_eta: Callable[[Backend, Done], Eta] | None = None,
) -> Summary:
    """Run (or resume) a job on one engine in this process.

    `make_backend`: the engine to use (e.g. one an estimate's sample already loaded); default: a new one.
    """
    tokenizer = load_tokenizer(model)
    return run_job(input_path, output_path, make_backend or (lambda: EngineBackend(LLMEngine(model, **engine_args))),
                   lambda backend: engine_context(backend.engine, tokenizer, model, config), config, quiet, make_eta)

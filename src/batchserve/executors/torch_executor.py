"""TorchExecutor: runs a scheduled batch through a real model with a paged KV cache.

All scheduled tokens of a step (prompt chunks and decodes of many requests)
are packed into one flat batch with no padding; positions and slot mappings
come from each request's computed-token count and block table. A speculating
request's draft tokens ride along after its known token and are verified from
the same forward pass (spec_decode.rejection_sampler).

Rows under a structured-output constraint get their grammar's token bitmask
applied to the logits before sampling; the bitmask is filled in a thread while
the forward pass runs (llguidance releases the GIL), and the sampled tokens
advance the matchers right after sampling.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..attention_layout import AttentionConfig
from ..core.batch import ScheduledBatch, StepResult
from ..gemm_shapes import RUN_IN_THIS_PROCESS
from ..model_config import ModelConfig
from ..models.attention import AttentionMetadata, allocate_kv_cache
from ..models.llama import CausalLM
from ..models.sampler import Sampler, make_generator, prompt_logprobs, to_host
from ..request import Request
from ..spec_decode.rejection_sampler import verify
from ..structured_output import GrammarBitmask, StructuredOutputManager
from ..structured_output.bitmask import apply_token_bitmask

if TYPE_CHECKING:
    from ..lora.manager import LoRAManager


@dataclass
class PreparedStep:
    """A step's inputs, built from its batch before it runs (`TorchExecutor.prepare`)."""

    start: float  # perf_counter when preparing began: the step's duration counts from here
    requests: list[Request]
    drafts: dict[Request, list[int]]
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    sample_rows: list[int]  # batch index of each request that samples
    sample_tokens: torch.Tensor  # its last token's index in the flat batch (on the device: copied before the forward)
    verify_rows: list[int]  # batch index of each speculating request
    verify_tokens: list[int]  # flat indices of their k + 1 verified positions, requests in order
    prompt_scored: list[tuple[int, int, int, int]]  # (batch index, flat start, positions, computed) of prompt_logprobs
    bitmask: Future[GrammarBitmask | None] | None  # the sampling rows' grammar bitmask, being filled


@dataclass
class LaunchedStep:
    """A prepared step whose forward and sampling were launched (`TorchExecutor.launch`), before the host reads them."""

    step: PreparedStep
    launched: float  # perf_counter at launch: the forward's time counts from here
    hidden: torch.Tensor
    token_ids: torch.Tensor | None  # the sampling rows' tokens, on the device (None: no row samples)
    raw_logits: torch.Tensor | None  # their unprocessed logits, for logprobs
    constrained: bool  # a grammar bitmask was applied: its matchers take the sampled tokens


class PendingStep:
    """A launched step's result, read on the first `result()` (which waits for the device)."""

    def __init__(self, finish: Callable[[], StepResult]) -> None:
        self._finish: Callable[[], StepResult] | None = finish
        self._result: StepResult | None = None

    def result(self) -> StepResult:
        if self._finish is not None:
            self._result, self._finish = self._finish(), None
        return self._result


class TorchExecutor:
    def __init__(
        self,
        model: CausalLM,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        seed: int = 0,
        attention: AttentionConfig = AttentionConfig(),
        structured_output: StructuredOutputManager | None = None,
        lora: LoRAManager | None = None,
    ) -> None:
        self.model = model
        self.structured_output = structured_output
        self._bitmask_filler = ThreadPoolExecutor(1, thread_name_prefix="grammar-bitmask")
        self.lora = lora  # adds each row's adapter delta; None serves the base model only
        self.attention = attention
        self.config = config
        self.block_size = block_size
        self.device = device
        self.kv_caches = allocate_kv_cache(config, num_blocks, block_size, dtype, device)
        self.sampler = Sampler()
        # Per-request generators, dropped with the request: a seeded request samples the same
        # tokens whatever its batch-mates; unseeded ones share this engine's generator.
        self._generators: weakref.WeakKeyDictionary[Request, torch.Generator | None] = weakref.WeakKeyDictionary()
        self._default_generator = make_generator(seed)
        self.prepare_s = 0.0  # time spent building inputs, for the overhead benchmark
        self.model_s = 0.0

    def _generator(self, req: Request) -> torch.Generator:
        gen = self._generators.get(req)
        if gen is None:
            gen = make_generator(req.sampling_params.seed) or self._default_generator
            self._generators[req] = gen
        return gen

    def execute(self, batch: ScheduledBatch) -> StepResult:
        return self.finish(self.launch(self.prepare(batch)))

    def execute_async(self, batch: ScheduledBatch) -> PendingStep:
        """Prepare and launch the step, and leave the wait for its results to the caller's `result()`: on a GPU
        the caller schedules the next step while this one computes. (On a CPU the forward is the host's own
        work, so the step has run by the time this returns; a second thread to run it in lost a third of the
        throughput to the GIL, bench/RESULTS.md.) The requests' tokens and block tables are read here, before
        the scheduler changes them again."""
        launched = self.launch(self.prepare(batch))
        return PendingStep(functools.partial(self.finish, launched))

    @torch.inference_mode()
    def prepare(self, batch: ScheduledBatch) -> PreparedStep:
        """The step's inputs from the batch and its requests' current state."""
        start = time.perf_counter()
        input_ids: list[int] = []
        sample_rows: list[int] = []  # batch index of each request that samples
        sample_tokens: list[int] = []  # its last token's index in the flat batch
        scored: list[tuple[int, int, int]] = []  # (batch index, flat start, prompt positions) of prompt_logprobs
        verify_rows: list[int] = []  # batch index of each speculating request
        verify_tokens: list[int] = []  # flat indices of their k + 1 verified positions, requests in order
        drafts = batch.spec_token_ids
        # flat-batch order of the requests: batch order, or grouped by adapter so each adapter's rows are one slice
        order = range(len(batch.requests)) if self.lora is None else self.lora.row_order(batch.requests)
        pos, meta = AttentionMetadata.of_rows(  # copies of the block tables: the scheduler goes on changing them
            [list(batch.requests[i].block_ids) for i in order], [batch.num_computed[i] for i in order],
            [batch.num_tokens[i] for i in order], self.block_size, self.device, self.attention)
        for i, flat_start, flat_end in zip(order, meta.query_start_loc, meta.query_start_loc[1:]):
            req, c = batch.requests[i], batch.num_computed[i]
            end = c + flat_end - flat_start
            draft = drafts.get(req) if drafts else None
            input_ids += req.tokens(c, end) if draft is None else req.tokens(c, end - len(draft)) + draft
            num_scored = min(end, req.num_prompt_tokens - 1) - c  # positions whose next token is a prompt token
            if req.sampling_params.prompt_logprobs is not None and num_scored > 0:
                scored.append((i, flat_start, num_scored))
            if draft is not None:
                verify_rows.append(i)
                verify_tokens += range(flat_end - len(draft) - 1, flat_end)
            elif batch.samples(i):
                sample_rows.append(i)
                sample_tokens.append(flat_end - 1)
        if self.lora is not None:
            self.lora.prepare([batch.requests[i] for i in order], meta.query_start_loc)
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        RUN_IN_THIS_PROCESS.first_run(len(input_ids))  # its GEMM kernels are built from here on
        bitmask = self._start_bitmask([batch.requests[i] for i in sample_rows])
        prompt_scored = [(i, flat_start, num, batch.num_computed[i]) for i, flat_start, num in scored]
        self.prepare_s += time.perf_counter() - start
        return PreparedStep(start, list(batch.requests), dict(drafts), ids, pos, meta, sample_rows,
                            torch.tensor(sample_tokens, dtype=torch.long, device=self.device),
                            verify_rows, verify_tokens, prompt_scored, bitmask)

    @torch.inference_mode()
    def launch(self, step: PreparedStep) -> LaunchedStep:
        """The forward pass and sampling of a prepared step, as far as they go without the host waiting for the
        device (on a GPU: its kernels are queued; on a CPU the work is done here)."""
        launched = time.perf_counter()
        hidden = self.model(step.input_ids, step.positions, self.kv_caches, step.metadata)
        token_ids = raw_logits = None
        constrained = False
        if step.sample_rows:
            reqs = [step.requests[i] for i in step.sample_rows]
            logits = self.model.compute_logits(hidden[step.sample_tokens])
            grammar = step.bitmask.result() if step.bitmask is not None else None
            if grammar is not None:
                # Before the sampler, so logprobs are over the tokens the grammar allows (as in vLLM).
                apply_token_bitmask(logits, grammar.bitmask, grammar.rows)
                constrained = True
            token_ids, raw_logits = self.sampler.sample(
                logits,
                [r.sampling_params for r in reqs],
                [self._generator(r) for r in reqs],
                [r.prompt_token_ids for r in reqs],
                [r.output_token_ids for r in reqs],
                [r.sampling_params.stop_token_ids for r in reqs],
            )
        return LaunchedStep(step, launched, hidden, token_ids, raw_logits, constrained)

    @torch.inference_mode()
    def finish(self, launched: LaunchedStep) -> StepResult:
        """Wait for a launched step and bring its results to the host (the step's one wait: `to_host`)."""
        step, hidden = launched.step, launched.hidden
        requests, drafts, sample_rows = step.requests, step.drafts, step.sample_rows
        sampled: list[list[int]] = [[] for _ in requests]
        logprobs: list[dict[int, float] | None] = [None] * len(requests)
        stop_rows: frozenset[int] = frozenset()
        if sample_rows:
            reqs = [requests[i] for i in sample_rows]
            out = to_host(launched.token_ids, launched.raw_logits, [r.sampling_params for r in reqs])
            for row, tok, lp in zip(sample_rows, out.token_ids, out.logprobs):
                sampled[row] = [tok]
                logprobs[row] = lp
            if launched.constrained:
                complete = self.structured_output.accept_tokens(reqs, out.token_ids)
                stop_rows = frozenset(sample_rows[i] for i in complete)
        if step.verify_rows:
            spec_reqs = [requests[i] for i in step.verify_rows]
            kept = verify(self.sampler, self.model.compute_logits(hidden[step.verify_tokens]), spec_reqs,
                          [drafts[r] for r in spec_reqs], [self._generator(r) for r in spec_reqs])
            for row, tokens in zip(step.verify_rows, kept):
                sampled[row] = tokens
        prompt_lps = self._prompt_logprobs(requests, hidden, step.prompt_scored) if step.prompt_scored else None
        end = time.perf_counter()
        self.model_s += end - launched.launched
        return StepResult(end - step.start, sampled, logprobs, prompt_lps, stop_rows)

    def _prompt_logprobs(
        self, requests: list[Request], hidden: torch.Tensor, scored: list[tuple[int, int, int, int]]
    ) -> list[list[dict[int, float]] | None]:
        """Log-probabilities of the prompt tokens this step's chunks predict, for requests that asked."""
        out: list[list[dict[int, float]] | None] = [None] * len(requests)
        for i, flat_start, num, c in scored:
            req = requests[i]
            logits = self.model.compute_logits(hidden[flat_start:flat_start + num])
            out[i] = prompt_logprobs(logits, req.tokens(c + 1, c + 1 + num), req.sampling_params.prompt_logprobs)
        return out

    def _start_bitmask(self, reqs: list[Request]) -> Future[GrammarBitmask | None] | None:
        """Start filling the sampling rows' grammar bitmasks, to overlap the forward pass; None if none is constrained."""
        so = self.structured_output
        if so is None or not any(so.is_constrained(r) for r in reqs):
            return None
        return self._bitmask_filler.submit(so.grammar_bitmask, reqs)

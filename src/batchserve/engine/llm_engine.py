"""The request-level engine: prompts and sampling params in, text and token outputs out.

`Engine` works on token-level `Request`s; `LLMEngine` wires a model to it
and adds what users see, each job in its own module: the input processor
(tokenization, checks, `n` fan-out, grammars), the sibling gate (`n` completions
compute the prompt once), the output processor (detokenization, stop
strings, logprobs, outputs) and the stats. `LLM.generate`, batch jobs and
the server all drive one of these with `add_request` / `step` /
`abort_request`, so they behave the same.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import torch

from ..attention_layout import AttentionConfig, default_attention_backend
from ..config import (CacheConfig, CompilationConfig, QuantizationConfig, compiles_decode, expert_batching,
                      scheduler_config)
from ..core.scheduler import Scheduler
from ..executors.torch_executor import TorchExecutor
from ..lora import LoRAAdmission, LoRAConfig, LoRARequest
from ..lora.manager import LoRAManager
from ..model_config import ModelConfig, kv_bytes_per_block
from ..models.batch_invariant import make_batch_invariant
from ..models.flex_attention import TRITON_MIN_TILE
from ..models.llama import CausalLM
from ..models.loader import load_model
from ..models.paged_decode import load_kernel
from ..outputs import RequestOutput
from ..request import Request, RequestStatus, SamplingParams
from ..spec_decode import SpeculativeConfig, Speculator
from ..spec_decode.draft_model import DraftModelProposer, check_draft_tokenizer, check_draft_vocab
from ..structured_output import StructuredOutputManager, ll_tokenizer
from ..tokenizer import Tokenizer, load_tokenizer
from .core import AsyncEngine, Engine, StepOutput
from .input_processor import InputProcessor, PromptType, generation_defaults, read_generation_config
from .memory import num_kv_blocks
from .output_processor import OutputProcessor
from .parallel_sampling import SiblingGate
from .stats import EngineStats, StatsCollector


class LLMEngine:
    """A model with a paged KV cache, continuous batching, prefix caching and chunked prefill.

    `model` is a local Hugging Face directory, a .gguf file or "tiny" (built-in random weights,
    byte tokenizer: its text is noise, for smoke tests and benchmarks).
    `max_model_len`: the longest sequence (prompt + output) served, at most the model's own context
    length (None: that length); a smaller one caps unbounded outputs and requests' KV needs.
    `weight_prepack` (CPU): pack the projection weights for oneDNN at load,
    1.5-2x faster GEMMs than torch's default linear; False keeps the default.
    `quantization`: "int8" stores the decoder's projection weights as int8 with
    one scale per output channel, "int4" as int4 with a scale and offset per
    `quantization_group_size` weights (models/quantization.py), "gguf" runs a
    GGUF file's own 4-bit blocks (models/gguf_quantization.py); None keeps `dtype`.
    `quantize_lm_head`: with a quantization, the LM head runs int8 too; False
    (default) keeps it in `dtype` (QuantizationConfig.quantize_lm_head).
    `deterministic`: batch-invariant numerics, so a request's tokens do not depend
    on its batch-mates, its prompt's chunking or a preemption (models/batch_invariant.py).
    `enforce_eager`: True (default) runs every step eagerly; False compiles pure decode
    steps (torch.compile, `CausalLM.compile_decode`; on a CPU through inductor's C++ wrapper): on the 2-core CPU
    a batch-1 step of SmolLM2 is 1.12-1.31x (bf16) / 1.14-1.34x (4-bit GGUF) faster than eager, after up to ~2
    minutes of compiling on the first decode
    step (bench/RESULTS.md). Eager stays the default so that short jobs, tests and one-off commands do not
    pay that; on CUDA it is not measured yet. With LoRA every step runs eagerly.
    `compilation_config` (with enforce_eager=False and the flex backend): the decode batch sizes that get
    their own compiled step, on CUDA a CUDA graph, vLLM's keys (`CompilationConfig`), e.g.
    {"max_cudagraph_capture_size": 64}; a decode step is padded to the next size, larger ones run eagerly.
    `attention_backend`: the paged attention kernel (`AttentionConfig.backend`): "cpp" (the default on a CPU
    with a C++ compiler) reads decode rows' K/V in place with a C++ kernel built on first use (8-25 s once
    per machine), "torch" (the default elsewhere, and with `deterministic`) gathers K/V into padded copies
    for SDPA, "flex" reads them in place with compiled FlexAttention. `attention`: the backend's knobs
    (`AttentionConfig`), its `backend` included, which `attention_backend` overrides; None: the defaults.
    `enable_lora`, `max_loras`, `max_lora_rank`, `max_cpu_loras`: serve PEFT LoRA
    adapters, many in one batch (`LoRAConfig`; requests name theirs with a `LoRARequest`).
    `speculative_config`: speculative decoding, vLLM's keys (`SpeculativeConfig`), e.g.
    {"method": "ngram", "num_speculative_tokens": 4}; outputs keep the target model's distribution.
    `async_scheduling`: schedule the next step while this one runs and process this one's outputs while the
    next runs (vLLM's flag; `engine.core.AsyncEngine`): on a GPU the host's work hides behind the device's.
    On a CPU the forward is the host's own work, so it changes the order of the host's work only (measured
    0.97x on the 2-core CPU, bench/RESULTS.md). Greedy tokens are the same as without it; a request ended
    by a stop string or an abort runs one step more (discarded), and a request preempted while its step runs
    recomputes without that step's token (a seeded request then draws differently). Not with speculative decoding.
    `target_tokens_per_expert` (MoE, offline work): raise max_num_seqs and max_num_batched_tokens so a full
    decode step gives each expert this many rows on average (`config.expert_batching`); 0 = off.
    """

    def __init__(
        self,
        model: str = "tiny",
        *,
        dtype: str = "auto",
        device: str | None = None,
        max_model_len: int | None = None,
        kv_cache_memory: int | str | None = None,
        gpu_memory_utilization: float = 0.9,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        scheduler: str = "sarathi",
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 256,
        seed: int = 0,
        skip_tokenizer_init: bool = False,
        weight_prepack: bool = True,
        quantization: str | None = None,
        quantization_group_size: int = QuantizationConfig.group_size,
        quantize_lm_head: bool = QuantizationConfig.quantize_lm_head,
        deterministic: bool = False,
        enforce_eager: bool = True,
        compilation_config: CompilationConfig | dict[str, Any] | str | None = None,
        attention_backend: str | None = None,
        attention: AttentionConfig | None = None,
        enable_lora: bool = False,
        max_loras: int = LoRAConfig.max_loras,
        max_lora_rank: int = LoRAConfig.max_lora_rank,
        max_cpu_loras: int | None = LoRAConfig.max_cpu_loras,
        speculative_config: SpeculativeConfig | dict[str, Any] | str | None = None,
        target_tokens_per_expert: int = 0,
        async_scheduling: bool = False,
        **scheduler_fields: Any,
    ) -> None:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        spec_config = SpeculativeConfig.of(speculative_config)  # a bad config fails before any loading
        if async_scheduling and spec_config is not None:
            raise ValueError("async_scheduling does not cover speculative decoding yet (its drafts need the tokens "
                             "of the step still running); drop one of --async-scheduling, --speculative-config")
        # The tokenizer first: a missing or broken one fails in a second, not after reading gigabytes of weights.
        # Without a tokenizer, prompts must be token ids and outputs carry no text.
        self.tokenizer: Tokenizer | None = None if skip_tokenizer_init else load_tokenizer(model)
        if attention is None:  # the device's backend; a config given whole keeps its own unless told otherwise
            attention = AttentionConfig(backend=attention_backend or default_attention_backend(device.type,
                                                                                               deterministic))
        elif attention_backend is not None:
            attention = dataclasses.replace(attention, backend=attention_backend)
        if attention.backend == "flex" and device.type == "cuda" and block_size % TRITON_MIN_TILE:
            raise ValueError(f"the flex attention backend on CUDA needs block_size a multiple of {TRITON_MIN_TILE} "
                             f"(Triton's smallest key tile), got {block_size}; use 16 (the default) or 32, or the "
                             "torch attention backend")
        if attention.backend == "cpp":
            if device.type != "cpu":
                raise ValueError(f"the cpp attention backend is a CPU kernel; on {device.type} use the torch or "
                                 "flex attention backend")
            load_kernel()  # built here, once per machine: a missing compiler fails before the weights load
        compilation = CompilationConfig.of(compilation_config)
        if deterministic and (enable_lora or not enforce_eager):
            raise ValueError("deterministic=True does not cover LoRA adapters or compiled decode steps yet; "
                             "drop enable_lora / enforce_eager=False, or deterministic")
        self.quantization_config = QuantizationConfig(quantization, quantization_group_size, quantize_lm_head)
        compiled = compiles_decode(enforce_eager, enable_lora)
        self.model, self.model_config, self.model_path = load_model(
            model, dtype=dtype, device=device, prepack=weight_prepack, quantization=self.quantization_config,
            row_major_gemv=compiled and compilation.row_major_gemv)
        self.model_config = self.model_config.with_max_model_len(max_model_len)
        if deterministic:
            make_batch_invariant(self.model)
            attention = dataclasses.replace(attention, batch_invariant=True)
        self.device = device
        lora_config = LoRAConfig(enable_lora, max_loras, max_lora_rank, max_cpu_loras)
        # before sizing the KV cache: on a GPU the adapter slots take memory the cache must not count on
        self.lora_manager = LoRAManager(self.model, self.model_config, lora_config) if enable_lora else None
        torch_dtype = self.model.dtype
        # before sizing the KV cache: the draft's weights take device memory, and its cache (a block for each of
        # the target's) comes out of the same kv_cache_memory budget
        draft = self._load_draft(spec_config, dtype, weight_prepack)
        kv_configs = [self.model_config] + ([draft[1]] if draft else [])
        per_block = int(sum(kv_bytes_per_block(config, block_size, torch_dtype.itemsize) for config in kv_configs))
        gpu_memory = torch.cuda.mem_get_info(device) if device.type == "cuda" else None
        num_blocks = num_kv_blocks(kv_cache_memory, gpu_memory_utilization, per_block, gpu_memory)
        if target_tokens_per_expert and not self.model_config.is_moe:
            raise ValueError(f"target_tokens_per_expert sizes decode batches for MoE experts, and "
                             f"{self.model_config.name} is a dense model; drop it")
        max_num_seqs, max_num_batched_tokens = expert_batching(
            max_num_seqs, max_num_batched_tokens, self.model_config.num_experts,
            self.model_config.num_experts_per_tok, target_tokens_per_expert)
        sched_cfg = scheduler_config(
            scheduler, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, **scheduler_fields
        )
        cache_cfg = CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(sched_cfg, cache_cfg, max_model_len=self.model_config.max_model_len)
        if enable_lora:
            self.scheduler.admission_check = LoRAAdmission(max_loras)
        self.speculator = None if spec_config is None else Speculator(
            spec_config, draft and DraftModelProposer(*draft, num_blocks, block_size, device, attention))
        self.scheduler.speculator = self.speculator
        self.structured_output = None if self.tokenizer is None else StructuredOutputManager(
            functools.partial(ll_tokenizer, self.tokenizer, self.model_config.vocab_size,
                              self.model_config.eos_token_ids)
        )
        ladder = compiled and attention.backend == "flex"  # padded decode steps need a scratch block past the pool
        # which steps the executor runs compiled, for its step shapes (the cost model's); the draft model above
        # keeps the eager config: its forward steps never run compiled
        if compiled:
            attention = dataclasses.replace(attention, compiled_decode_rows=compilation.decode_rows(
                attention.backend, sched_cfg.max_num_seqs))
        self.executor = TorchExecutor(self.model, self.model_config, num_blocks + ladder, block_size, torch_dtype,
                                      device, seed, attention, self.structured_output, self.lora_manager)
        if compiled:
            self.model.compile_decode(self.executor.kv_caches,
                                      compilation.capture_sizes(sched_cfg.max_num_seqs) if ladder else (),
                                      compilation.inductor_compile_config, compilation.compile_regions)
        self.engine = (AsyncEngine if async_scheduling else Engine)(self.scheduler, self.executor)
        generation_config = read_generation_config(self.model_path)
        self.default_sampling_params = generation_defaults(generation_config)
        # The checkpoint's max_new_tokens also caps a chat request that sets no max_tokens (vLLM's rule).
        self.default_max_tokens: int | None = generation_config.get("max_new_tokens")
        self.input_processor = InputProcessor(self.tokenizer, self.model_config.vocab_size,
                                              self.model_config.eos_token_ids, self.structured_output)
        self.siblings = SiblingGate(cache_cfg)
        self.output_processor = OutputProcessor(self.tokenizer, self._stop)
        self._stats = StatsCollector(self.scheduler, self.siblings)
        self.step_observer: Callable[[StepOutput], None] | None = None
        """Called with every step that ran a batch (e.g. a job recording step shapes for its estimates)."""
        self._t0 = time.perf_counter()
        if compiled:
            self._compile_decode_steps()

    def _compile_decode_steps(self) -> None:
        """Compile the decode graphs now, at start-up as vLLM does, not inside the first requests' steps: dummy
        two-token prompts decode two tokens alone (the one-row graph, its LM head), then two together (the graph
        of more rows; on the flex backend the ladder's smallest size above one; its larger sizes compile on first
        use). Two tokens, not one: a one-token prompt runs as a decode over one key, and a graph first compiled
        for one key is specialized to it. Their outputs are dropped; the engine's counters and clock start after
        them, and the prefix cache forgets them."""
        params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        for rows in (1, 2):
            for i in range(rows):
                self.add_request(f"compile-decode-steps-{rows}-{i}", [0, 0], params)
            while self.has_unfinished():
                self.step()
        self._stats = StatsCollector(self.scheduler, self.siblings)
        kv = self.scheduler.kv
        kv.num_queries = kv.num_hits = 0
        kv.pool.reset_prefix_cache()
        self.executor.prepare_s = self.executor.model_s = 0.0
        self._t0 = time.perf_counter()

    def _load_draft(self, spec: SpeculativeConfig | None, dtype: str, prepack: bool
                    ) -> tuple[CausalLM, ModelConfig] | None:
        """The draft model and its config, checked against the target; None without a draft-model method."""
        if spec is None or spec.method != "draft":
            return None
        if self.tokenizer is not None:
            check_draft_tokenizer(self.tokenizer, load_tokenizer(spec.model), spec.model)
        model, config, _ = load_model(spec.model, dtype=dtype, device=self.device, prepack=prepack)
        check_draft_vocab(self.model_config, config, spec.model)
        return model, config

    @property
    def now(self) -> float:
        """Seconds since the engine started: the clock of every request timestamp."""
        return time.perf_counter() - self._t0

    def get_tokenizer(self) -> Tokenizer:
        return self.input_processor.get_tokenizer()

    def encode(self, prompt: PromptType) -> list[int]:
        """Token ids of a string, a token-id list, or a {"prompt": ...} / {"prompt_token_ids": [...]} dict."""
        return self.input_processor.encode(prompt)

    # ---- requests ----------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        deadline_s: float | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queue a prompt; raises ValueError (nothing queued) if it cannot run, e.g. longer than the context.

        `deadline_s` is a TTFT target in seconds from now, for the `edf` policy. `lora_request` runs
        it under that adapter (loaded and checked here the first time it is named).
        """
        if request_id in self.output_processor:
            raise ValueError(f"request id {request_id!r} is already running; ids must be unique")
        params = self.default_sampling_params if params is None else params
        now = self.now
        deadline = None if deadline_s is None else now + deadline_s
        adapter_id = None if lora_request is None else self._add_lora(lora_request)
        processed = self.input_processor.process(request_id, prompt, params, arrival_time=now, priority=priority,
                                                 deadline=deadline, adapter_id=adapter_id)
        for child in processed.children:  # validate everything before queueing anything
            self.scheduler.check_request(child)
        self.output_processor.add(processed)
        for child in self.siblings.admit(processed.children):
            self.engine.add_request(child)

    def _add_lora(self, lora_request: LoRARequest) -> int:
        if self.lora_manager is None:
            raise ValueError(f"LoRA adapter {lora_request.lora_name!r} requested, but LoRA is off: build the engine "
                             "with enable_lora=True (--enable-lora)")
        self.lora_manager.add(lora_request)
        return lora_request.lora_int_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its KV blocks return to the pool at once. Unknown or finished ids are a no-op."""
        children = self.output_processor.requests(request_id)
        if children is None:
            return None
        self.siblings.abort(children[0])
        self.scheduler.finish_requests([c for c in children if not c.is_finished], RequestStatus.FINISHED_ABORTED)
        return self.output_processor.abort(request_id, self.now)

    def has_unfinished(self) -> bool:
        return bool(self.output_processor)

    @property
    def num_unfinished(self) -> int:
        return len(self.output_processor)

    # ---- the step loop -----------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs of the prompts that got tokens or finished in it.

        Each output holds the cumulative text and token ids so far, and
        `finished` once all its completions are done.
        """
        engine = self.engine
        engine.now = max(engine.now, self.now)  # timestamps on the wall clock, idle gaps included
        step = engine.step()
        outputs = self.output_processor.process(step)
        if step.result is not None:
            self._stats.record(step.batch, step.result)
            if self.step_observer is not None:
                self.step_observer(step)
            for sibling in self.siblings.release(step.batch):
                engine.add_request(sibling)
        return outputs

    def _stop(self, req: Request) -> None:
        """A stop string ended a running request: finish it in the scheduler, freeing its blocks."""
        self.scheduler.finish_requests([req], RequestStatus.FINISHED_STOPPED)
        req.finish_time = self.now

    def stats(self) -> EngineStats:
        return self._stats.snapshot()

"""The request-level engine: prompts and sampling params in, text and token outputs out.

`Engine` works on token-level `Request`s; `LLMEngine` adds what users see:
tokenization, `n` completions per prompt, incremental detokenization, stop
strings, logprobs, aborts and wall-clock timestamps. `LLM.generate`, batch
jobs and the server all drive one of these with `add_request` / `step` /
`abort_request`, so they behave the same.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Union

import torch

from .config import CacheConfig, scheduler_config
from .core.batch import ScheduledBatch
from .core.scheduler import Scheduler
from .engine import Engine
from .executors.torch_executor import TorchExecutor
from .model_config import kv_bytes_per_block
from .models.loader import load_model
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from .request import Request, RequestStatus, SamplingParams
from .tokenizer import IncrementalDetokenizer, StopChecker, Tokenizer, load_tokenizer

PromptType = Union[str, Sequence[int], dict]

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_memory(value: int | float | str) -> int:
    """Bytes from 1073741824, 1e9, "512MiB" or "2GiB"."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size {value!r} not understood; write bytes or e.g. 512MiB, 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class _Child:
    """One completion being generated: the request plus its text state."""

    request: Request
    index: int
    detokenizer: IncrementalDetokenizer | None
    stop_checker: StopChecker | None
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float = 0.0
    text: str = ""
    stop_reason: int | str | None = None


@dataclass
class _Group:
    """One prompt and its `n` completions."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[_Child]
    num_unfinished: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_unfinished = len(self.children)


@dataclass(frozen=True)
class EngineStats:
    """Counters and gauges for progress lines and `/metrics`."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    """Prompt tokens looked up in the prefix cache."""
    prefix_cache_hits: int
    """Of which served from it."""
    computed_prompt_tokens: int
    """Prompt tokens actually run through the model (recomputation after preemption included)."""
    generation_tokens: int
    num_preemptions: int


class LLMEngine:
    """A model with a paged KV cache, continuous batching, prefix caching and chunked prefill.

    `model` is a local Hugging Face directory or "tiny" (built-in random weights,
    byte tokenizer: its text is noise, for smoke tests and benchmarks).
    `weight_prepack` (CPU): pack the projection weights for oneDNN at load,
    1.5-2x faster GEMMs than torch's default linear; False keeps the default.
    """

    def __init__(
        self,
        model: str = "tiny",
        *,
        dtype: str = "auto",
        device: str | None = None,
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
        **scheduler_fields: Any,
    ) -> None:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.model_config, self.model_path = load_model(model, dtype=dtype, device=device,
                                                                    prepack=weight_prepack)
        # Without a tokenizer, prompts must be token ids and outputs carry no text.
        self.tokenizer: Tokenizer | None = None if skip_tokenizer_init else load_tokenizer(model)
        self.device = device
        torch_dtype = self.model.dtype
        per_block = int(kv_bytes_per_block(self.model_config, block_size, torch_dtype.itemsize))
        num_blocks = self._num_blocks(kv_cache_memory, gpu_memory_utilization, per_block)
        sched_cfg = scheduler_config(
            scheduler, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, **scheduler_fields
        )
        cache_cfg = CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(sched_cfg, cache_cfg, max_model_len=self.model_config.max_model_len)
        self.executor = TorchExecutor(self.model, self.model_config, num_blocks, block_size, torch_dtype, device, seed)
        self.engine = Engine(self.scheduler, self.executor)
        self.default_sampling_params = self._generation_defaults()
        self._groups: dict[str, _Group] = {}
        self._by_request: dict[Request, tuple[_Group, _Child]] = {}
        self._t0 = time.perf_counter()
        self._prompt_tokens = 0
        self._computed_prompt_tokens = 0
        self._generation_tokens = 0
        self._num_preemptions = 0

    def _generation_defaults(self) -> SamplingParams:
        """The checkpoint's generation_config.json sampling fields, used when no SamplingParams is given."""
        path = None if self.model_path is None else self.model_path / "generation_config.json"
        if path is None or not path.is_file():
            return SamplingParams()
        with open(path) as f:
            config = json.load(f)
        if config.get("do_sample") is False:
            return SamplingParams(temperature=0.0)
        fields = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
        return SamplingParams(**{k: config[k] for k in fields if config.get(k) is not None})

    def _num_blocks(self, kv_cache_memory: int | str | None, utilization: float, per_block: int) -> int:
        if kv_cache_memory is not None:
            budget = parse_memory(kv_cache_memory)
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = int(total * utilization) - (total - free)
            if budget < per_block:
                raise ValueError(
                    f"gpu_memory_utilization={utilization} allows {total * utilization / 2**30:.1f} GiB of the GPU's "
                    f"{total / 2**30:.1f} GiB, but {(total - free) / 2**30:.1f} GiB are in use already (this model's "
                    "weights, other engines or processes); raise gpu_memory_utilization, free the other users, "
                    "or give the KV cache an explicit size with kv_cache_memory="
                )
        else:
            budget = 2**30  # 1 GiB on CPU unless told otherwise
        num_blocks = budget // per_block
        if num_blocks < 1:
            raise ValueError(
                f"the KV cache budget ({budget / 2**20:.1f} MiB) holds no block of {per_block / 2**20:.2f} MiB; "
                "give more with kv_cache_memory="
            )
        return num_blocks

    @property
    def now(self) -> float:
        """Seconds since the engine started: the clock of every request timestamp."""
        return time.perf_counter() - self._t0

    def get_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this engine was built with skip_tokenizer_init=True: it has no tokenizer")
        return self.tokenizer

    # ---- requests ----------------------------------------------------------------

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
            vocab = self.model_config.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
            return list(prompt)
        raise TypeError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> None:
        """Queue a prompt; raises ValueError (nothing queued) if it cannot run, e.g. longer than the context.

        `deadline_s` is a TTFT target in seconds from now, for the `edf` policy.
        """
        if request_id in self._groups:
            raise ValueError(f"request id {request_id!r} is already running; ids must be unique")
        params = self.default_sampling_params if params is None else params
        ids = self.encode(prompt)
        vocab = self.model_config.vocab_size
        bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
        if bad:  # the sampler indexes logits with them
            raise ValueError(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        text = prompt if isinstance(prompt, str) else prompt.get("prompt") if isinstance(prompt, dict) else None
        now = self.now
        deadline = None if deadline_s is None else now + deadline_s
        children = self._make_children(request_id, ids, params, now, priority, deadline)
        for child in children:  # validate everything before queueing anything
            self.scheduler.check_request(child.request)
        group = _Group(request_id, text, ids, children)
        self._groups[request_id] = group
        for child in children:
            self._by_request[child.request] = (group, child)
            self.engine.add_request(child.request)

    def _make_children(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, now: float, priority: int,
        deadline: float | None,
    ) -> list[_Child]:
        stop_ids = list(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids += [t for t in self.model_config.eos_token_ids if t not in stop_ids]
        children = []
        for k in range(params.n):
            seed = None if params.seed is None else params.seed + k
            child_params = replace(params, stop_token_ids=stop_ids, seed=seed, n=1)
            req = Request(
                request_id if params.n == 1 else f"{request_id}#{k}", prompt_ids, child_params,
                arrival_time=now, priority=priority, deadline=deadline,
            )
            children.append(_Child(
                request=req,
                index=k,
                detokenizer=None if self.tokenizer is None
                else IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens),
                stop_checker=StopChecker(params.stop, params.include_stop_str_in_output) if params.stop else None,
                logprobs=[] if params.logprobs is not None else None,
            ))
        return children

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its KV blocks return to the pool at once. Unknown or finished ids are a no-op."""
        group = self._groups.pop(request_id, None)
        if group is None:
            return None
        live = [c.request for c in group.children if not c.request.is_finished]
        self.scheduler.finish_requests(live, RequestStatus.FINISHED_ABORTED)
        for child in group.children:
            if child.request.finish_time is None:
                child.request.finish_time = self.now
            self._by_request.pop(child.request, None)  # a completion that finished before left already
        return self._output(group)

    def has_unfinished(self) -> bool:
        return bool(self._groups)

    @property
    def num_unfinished(self) -> int:
        return len(self._groups)

    # ---- the step loop -----------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs of the prompts that got tokens or finished in it.

        Each output holds the cumulative text and token ids so far, and
        `finished` once all its completions are done.
        """
        engine = self.engine
        engine.now = max(engine.now, self.now)  # timestamps on the wall clock, idle gaps included
        finished = engine.step()
        batch, result = engine.last_batch, engine.last_result
        touched: dict[str, _Group] = {}
        if batch is not None and result is not None:
            self._count_step(batch)
            for req, toks, lp in zip(batch.requests, result.sampled_token_ids, result.logprobs):
                if toks:
                    group, child = self._by_request[req]
                    self._generation_tokens += len(toks)
                    if self._on_tokens(child, toks, lp):
                        finished.append(req)
                    touched[group.request_id] = group
            engine.last_batch = engine.last_result = None
        for req in finished:
            group, child = self._by_request.pop(req)
            if child.detokenizer is not None and not isinstance(child.stop_reason, str):
                child.text += child.detokenizer.flush()  # a trailing incomplete character
            group.num_unfinished -= 1
            touched[group.request_id] = group
            if group.num_unfinished == 0:
                del self._groups[group.request_id]
        return [self._output(g) for g in touched.values()]

    def _count_step(self, batch: ScheduledBatch) -> None:
        self._computed_prompt_tokens += batch.num_computed_prompt_tokens
        self._num_preemptions += len(batch.preempted)

    def stats(self) -> EngineStats:
        kv = self.scheduler.kv
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=kv.pool.usage,
            prefix_cache_queries=kv.num_queries,
            prefix_cache_hits=kv.num_hits,
            computed_prompt_tokens=self._computed_prompt_tokens,
            generation_tokens=self._generation_tokens,
            num_preemptions=self._num_preemptions,
        )

    def _on_tokens(self, child: _Child, tokens: list[int], logprobs: dict[int, float] | None) -> bool:
        """Detokenize, collect logprobs, apply stop strings; True if a stop string just finished the request."""
        req = child.request
        if child.logprobs is not None and logprobs is not None:
            ranked = sorted(logprobs.items(), key=lambda kv: -kv[1])
            child.logprobs.append({
                tok: Logprob(lp, rank, None if self.tokenizer is None else self.tokenizer.decode([tok], False))
                for rank, (tok, lp) in enumerate(ranked, 1)
            })
            child.cumulative_logprob += logprobs.get(tokens[-1], 0.0)
        if req.status == RequestStatus.FINISHED_STOPPED and tokens[-1] in req.sampling_params.stop_token_ids:
            child.stop_reason = tokens[-1]
        if child.detokenizer is None:
            return False
        new_text = child.detokenizer.add(tokens)
        child.text += new_text
        if child.stop_checker is None:
            return False
        cut = child.stop_checker.check(child.text, len(new_text))
        if cut is None:
            return False
        child.stop_reason = child.stop_checker.matched
        child.text = child.text[:cut]
        if req.is_finished:  # it also hit max_tokens or EOS this step: the stop string wins, as in vLLM
            req.status = RequestStatus.FINISHED_STOPPED
            return False
        self.scheduler.finish_requests([req], RequestStatus.FINISHED_STOPPED)
        req.finish_time = self.now
        return True

    def _output(self, group: _Group) -> RequestOutput:
        outputs = [
            CompletionOutput(
                index=c.index,
                text=c.text,
                token_ids=list(c.request.output_token_ids),
                cumulative_logprob=c.cumulative_logprob if c.logprobs is not None else None,
                logprobs=c.logprobs,
                finish_reason=c.request.status.finish_reason,
                stop_reason=c.stop_reason,
            )
            for c in group.children
        ]
        first = group.children[0].request
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            outputs=outputs,
            finished=all(c.request.is_finished for c in group.children),
            num_cached_tokens=first.num_cached_tokens,
            metrics=RequestMetrics.of(first),
        )


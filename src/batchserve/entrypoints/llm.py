"""The offline API: `LLM(model).generate(prompts, params)`, shaped like vLLM's."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

import torch

from ..config import CacheConfig, scheduler_config
from ..core.scheduler import Scheduler
from ..engine import Engine
from ..executors.torch_executor import TorchExecutor
from ..models.attention import kv_cache_bytes_per_block
from ..models.loader import load_model
from ..outputs import CompletionOutput, Logprob, RequestOutput
from ..request import Request, RequestStatus, SamplingParams
from ..tokenizer import IncrementalDetokenizer, StopChecker, Tokenizer, load_tokenizer
from .progress import Progress

PromptType = Union[str, list[int], dict]

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


class LLM:
    """A model with a paged KV cache, continuous batching, prefix caching and chunked prefill.

    `model` is a local Hugging Face directory or "tiny" (built-in random weights,
    byte tokenizer: its text is noise, for smoke tests and benchmarks).
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
        **scheduler_fields: Any,
    ) -> None:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.model_config, self.model_path = load_model(model, dtype=dtype, device=device)
        # Without a tokenizer, prompts must be token ids and outputs carry no text.
        self.tokenizer: Tokenizer | None = None if skip_tokenizer_init else load_tokenizer(model)
        self.device = device
        torch_dtype = next(self.model.parameters()).dtype
        per_block = kv_cache_bytes_per_block(self.model_config, block_size, torch_dtype)
        num_blocks = self._num_blocks(kv_cache_memory, gpu_memory_utilization, per_block)
        sched_cfg = scheduler_config(
            scheduler, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, **scheduler_fields
        )
        cache_cfg = CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(sched_cfg, cache_cfg, max_model_len=self.model_config.max_model_len)
        self.executor = TorchExecutor(self.model, self.model_config, num_blocks, block_size, torch_dtype, device, seed)
        self.engine = Engine(self.scheduler, self.executor)
        self._counter = 0
        self.default_sampling_params = self._generation_defaults()

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
        else:
            budget = 2**30  # 1 GiB on CPU unless told otherwise
        num_blocks = budget // per_block
        if num_blocks < 1:
            raise ValueError(
                f"the KV cache budget ({budget / 2**20:.1f} MiB) holds no block of {per_block / 2**20:.2f} MiB; "
                "give more with kv_cache_memory="
            )
        return num_blocks

    def get_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this LLM was built with skip_tokenizer_init=True: it has no tokenizer")
        return self.tokenizer

    # ---- generation --------------------------------------------------------------

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
        encoded = [self._encode(p) for p in prompts]
        groups = [self._make_children(ids, params) for ids, params in zip(encoded, params_list)]
        for i, children in enumerate(groups):  # check everything before running anything
            for child in children:
                try:
                    self.scheduler.check_request(child.request)
                except ValueError as err:
                    raise ValueError(f"prompt {i}: {err}") from None
        for children in groups:
            for child in children:
                self.engine.add_request(child.request)
        self._run([c for children in groups for c in children], use_tqdm)
        return [
            self._request_output(text, ids, children)
            for (text, ids), children in zip(zip(prompts, encoded), groups)
        ]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's own chat template, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts = [
            {"prompt_token_ids": tokenizer.encode(
                tokenizer.apply_chat_template(conv, add_generation_prompt=True), add_special_tokens=False
            )}
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _encode(self, prompt: PromptType) -> list[int]:
        if isinstance(prompt, str):
            return self.get_tokenizer().encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return self._encode(list(prompt["prompt_token_ids"]))
            if "prompt" in prompt:
                return self.get_tokenizer().encode(prompt["prompt"])
            raise ValueError(f"a prompt dict needs 'prompt' or 'prompt_token_ids', got keys {sorted(prompt)}")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            vocab = self.model_config.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
            return list(prompt)
        raise TypeError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")

    def _make_children(self, prompt_ids: list[int], params: SamplingParams) -> list[_Child]:
        stop_ids = list(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids += [t for t in self.model_config.eos_token_ids if t not in stop_ids]
        children = []
        for k in range(params.n):
            seed = None if params.seed is None else params.seed + k
            child_params = replace(params, stop_token_ids=stop_ids, seed=seed, n=1)
            self._counter += 1
            req = Request(str(self._counter), list(prompt_ids), child_params, arrival_time=self.engine.now)
            children.append(_Child(
                request=req,
                index=k,
                detokenizer=None if self.tokenizer is None
                else IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens),
                stop_checker=StopChecker(params.stop, params.include_stop_str_in_output) if params.stop else None,
                logprobs=[] if params.logprobs is not None else None,
            ))
        return children

    def _run(self, children: list[_Child], use_tqdm: bool) -> None:
        by_request = {c.request: c for c in children}
        engine = self.engine
        done = 0
        with Progress("generating", len(children), enabled=use_tqdm and len(children) > 1) as progress:
            t0 = time.perf_counter()
            tokens = 0
            while engine.has_unfinished():
                finished = engine.step()
                batch, result = engine.last_batch, engine.last_result
                for req, toks, lp in zip(batch.requests, result.sampled_token_ids, result.logprobs):
                    if toks:
                        tokens += len(toks)
                        done += self._on_tokens(by_request[req], toks, lp)
                for req in finished:
                    child = by_request[req]
                    if child.detokenizer is not None and not isinstance(child.stop_reason, str):
                        child.text += child.detokenizer.flush()  # a trailing incomplete character
                done += len(finished)
                elapsed = time.perf_counter() - t0
                progress.update(done, f"{tokens / max(elapsed, 1e-9):.0f} output tok/s")

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
        return True

    def _request_output(self, prompt: PromptType, ids: list[int], children: list[_Child]) -> RequestOutput:
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
            for c in children
        ]
        return RequestOutput(
            request_id=children[0].request.request_id,
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_token_ids=ids,
            outputs=outputs,
            num_cached_tokens=children[0].request.num_cached_tokens,
        )

"""The output side: sampled tokens to what users see (text, stop strings, logprobs, `RequestOutput`s).

Each step's tokens are detokenized incrementally, checked against stop
strings and collected with their logprobs per completion; the `n`
completions of a prompt are gathered into one `RequestOutput` (vLLM v1's
output processor). Torch-free: it needs only a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from ..request import Request, RequestStatus
from ..tokenizer import IncrementalDetokenizer, StopChecker, Tokenizer
from .core import StepOutput
from .input_processor import ProcessedPrompt


@dataclass
class _Completion:
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
class _Prompt:
    """One prompt and its `n` completions."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    completions: list[_Completion]
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    """vLLM's shape: None for the first token (nothing predicts it), then one dict per prompt token."""
    num_unfinished: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_unfinished = len(self.completions)


class OutputProcessor:
    """Per-prompt text state, fed each step's batch and result.

    `stop(request)` is called when a stop string ends a request the scheduler
    still runs: the engine finishes it there and stamps its finish time.
    """

    def __init__(self, tokenizer: Tokenizer | None, stop: Callable[[Request], None]) -> None:
        self.tokenizer = tokenizer
        self._stop = stop
        self._prompts: dict[str, _Prompt] = {}
        self._by_request: dict[Request, tuple[_Prompt, _Completion]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._prompts

    def __len__(self) -> int:
        return len(self._prompts)

    def add(self, processed: ProcessedPrompt) -> None:
        completions = [self._completion(req, k, processed.prompt_token_ids) for k, req in enumerate(processed.children)]
        prompt = _Prompt(processed.request_id, processed.prompt, processed.prompt_token_ids, completions)
        if processed.children[0].sampling_params.prompt_logprobs is not None:
            prompt.prompt_logprobs = [None]
        self._prompts[prompt.request_id] = prompt
        for c in completions:
            self._by_request[c.request] = (prompt, c)

    def _completion(self, req: Request, index: int, prompt_ids: list[int]) -> _Completion:
        params = req.sampling_params
        return _Completion(
            request=req,
            index=index,
            detokenizer=None if self.tokenizer is None
            else IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens),
            stop_checker=StopChecker(params.stop, params.include_stop_str_in_output) if params.stop else None,
            logprobs=[] if params.logprobs is not None else None,
        )

    def requests(self, request_id: str) -> list[Request] | None:
        """The child requests of a live prompt, first completion first; None if the id is unknown or done."""
        prompt = self._prompts.get(request_id)
        return None if prompt is None else [c.request for c in prompt.completions]

    def abort(self, request_id: str, now: float) -> RequestOutput:
        """Forget a live prompt whose requests the engine just aborted; its final output."""
        prompt = self._prompts.pop(request_id)
        for c in prompt.completions:
            if c.request.finish_time is None:
                c.request.finish_time = now
            self._by_request.pop(c.request, None)  # a completion that finished before left already
        return self._output(prompt)

    def process(self, step: StepOutput) -> list[RequestOutput]:
        """Outputs of the prompts that got tokens or finished in this step (by the scheduler or a stop string)."""
        touched: dict[str, _Prompt] = {}
        finished = list(step.finished)
        if step.result is not None and step.result.prompt_logprobs is not None:
            self._on_prompt_logprobs(step)
        if step.result is not None:
            for req, toks, lp in zip(step.batch.requests, step.result.sampled_token_ids, step.result.logprobs):
                if toks:
                    prompt, completion = self._by_request[req]
                    if self._on_tokens(completion, toks, lp):
                        finished.append(req)
                    touched[prompt.request_id] = prompt
        for req in finished:
            prompt, completion = self._by_request.pop(req)
            if completion.detokenizer is not None and not isinstance(completion.stop_reason, str):
                completion.text += completion.detokenizer.flush()  # a trailing incomplete character
            prompt.num_unfinished -= 1
            touched[prompt.request_id] = prompt
            if prompt.num_unfinished == 0:
                del self._prompts[prompt.request_id]
        return [self._output(p) for p in touched.values()]

    def _on_prompt_logprobs(self, step: StepOutput) -> None:
        """Append the prompt positions a chunk scored; a recomputation after preemption repeats known ones."""
        for req, c, entries in zip(step.batch.requests, step.batch.num_computed, step.result.prompt_logprobs):
            prompt, completion = self._by_request.get(req, (None, None))
            if entries is None or prompt is None or completion.index != 0 or prompt.prompt_logprobs is None:
                continue
            known = len(prompt.prompt_logprobs)  # positions 0 .. known-1 are in
            for position, entry in enumerate(entries, c + 1):
                if position == known:
                    prompt.prompt_logprobs.append(self._ranked(entry))
                    known += 1

    def _ranked(self, logprobs: dict[int, float]) -> dict[int, Logprob]:
        ranked = sorted(logprobs.items(), key=lambda kv: -kv[1])
        return {tok: Logprob(lp, rank, None if self.tokenizer is None else self.tokenizer.decode([tok], False))
                for rank, (tok, lp) in enumerate(ranked, 1)}

    def _on_tokens(self, completion: _Completion, tokens: list[int], logprobs: dict[int, float] | None) -> bool:
        """Detokenize, collect logprobs, apply stop strings; True if a stop string just finished the request."""
        req = completion.request
        if completion.logprobs is not None and logprobs is not None:
            completion.logprobs.append(self._ranked(logprobs))
            completion.cumulative_logprob += logprobs.get(tokens[-1], 0.0)
        params = req.sampling_params
        stop_token = req.status == RequestStatus.FINISHED_STOPPED and tokens[-1] in params.stop_token_ids
        if stop_token:
            completion.stop_reason = tokens[-1]
        if completion.detokenizer is None:
            return False
        # The stop token (EOS or a stop_token_id) ends the text, it is not part of it (vLLM's rule).
        text_tokens = tokens[:-1] if stop_token and not params.include_stop_str_in_output else tokens
        if completion.stop_checker is None:
            completion.text += completion.detokenizer.add(text_tokens)
            return False
        # token by token: a stop string inside a speculated run ends the output at the token that completed it
        for j, token in enumerate(text_tokens):
            new_text = completion.detokenizer.add([token])
            completion.text += new_text
            cut = completion.stop_checker.check(completion.text, len(new_text))
            if cut is not None:
                break
        else:
            return False
        if j + 1 < len(tokens):
            req.truncate_output(len(tokens) - j - 1)
            del tokens[j + 1:]
        completion.stop_reason = completion.stop_checker.matched
        completion.text = completion.text[:cut]
        if req.is_finished:  # it also hit max_tokens or EOS this step: the stop string wins, as in vLLM
            req.status = RequestStatus.FINISHED_STOPPED
            return False
        self._stop(req)
        return True

    def _output(self, prompt: _Prompt) -> RequestOutput:
        """The prompt's output so far; counts and timestamps are the first completion's, which ran the prompt."""
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
            for c in prompt.completions
        ]
        first = prompt.completions[0].request
        return RequestOutput(
            request_id=prompt.request_id,
            prompt=prompt.prompt,
            prompt_token_ids=prompt.prompt_token_ids,
            outputs=outputs,
            finished=all(c.request.is_finished for c in prompt.completions),
            num_cached_tokens=first.num_cached_tokens,
            metrics=RequestMetrics.of(first),
            prompt_logprobs=prompt.prompt_logprobs,
        )

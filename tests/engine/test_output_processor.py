"""The output side, without a model: text deltas, stop strings across tokens, logprobs and the `n` fan-in."""

from __future__ import annotations

from dataclasses import replace

from batchserve.core.batch import ScheduledBatch, StepResult
from batchserve.engine.core import StepOutput
from batchserve.engine.input_processor import InputProcessor, ProcessedPrompt
from batchserve.engine.output_processor import OutputProcessor
from batchserve.request import Request, RequestStatus, SamplingParams
from batchserve.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


class Harness:
    """An output processor fed by hand: each `step` appends one token per request, as the scheduler would."""

    def __init__(self, prompt: str, params: SamplingParams) -> None:
        self.stopped: list[Request] = []
        self.processor = OutputProcessor(TOK, self._stop)
        inputs = InputProcessor(TOK, TOK.vocab_size, [TOK.EOS])
        self.prompt: ProcessedPrompt = inputs.process("p", prompt, params, arrival_time=0.0)
        self.processor.add(self.prompt)
        for req in self.prompt.children:
            req.status = RequestStatus.RUNNING

    def _stop(self, req: Request) -> None:
        req.status = RequestStatus.FINISHED_STOPPED
        self.stopped.append(req)

    def step(self, tokens: dict[Request, int], finish: RequestStatus | None = None,
             logprobs: dict[int, float] | None = None):
        reqs = list(tokens)
        for req, tok in tokens.items():
            req.append_output(tok)
        finished = []
        if finish is not None:
            for req in reqs:
                req.status = finish
            finished = reqs
        batch = ScheduledBatch(requests=reqs, num_tokens=[1] * len(reqs))
        result = StepResult(1.0, [[tokens[r]] for r in reqs], [logprobs] * len(reqs))
        return self.processor.process(StepOutput(batch, result, finished))


def test_a_stop_string_spanning_tokens_cuts_the_text_and_stops_the_request() -> None:
    h = Harness("x", SamplingParams(stop=["lo w"], max_tokens=50))
    (req,) = h.prompt.children
    texts = []
    for byte in b"hello world":
        (out,) = h.step({req: byte})
        texts.append(out.outputs[0].text)
        if out.finished:
            break
    assert h.stopped == [req] and "p" not in h.processor
    assert out.outputs[0].text == "hel" and out.outputs[0].stop_reason == "lo w"
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].token_ids == list(b"hello w")
    assert texts == ["h", "he", "hel", "hell", "hello", "hello ", "hel"]  # cut once the match completes


def test_n_completions_are_gathered_and_finish_together() -> None:
    h = Harness("x", SamplingParams(n=2, max_tokens=2, ignore_eos=True))
    a, b = h.prompt.children
    (out,) = h.step({a: ord("a"), b: ord("b")})
    assert [c.text for c in out.outputs] == ["a", "b"] and not out.finished
    (out,) = h.step({a: ord("c")}, finish=RequestStatus.FINISHED_LENGTH)
    assert not out.finished and out.outputs[0].finish_reason == "length" and out.outputs[1].finish_reason is None
    (out,) = h.step({b: ord("d")}, finish=RequestStatus.FINISHED_LENGTH)
    assert out.finished and [c.text for c in out.outputs] == ["ac", "bd"] and len(h.processor) == 0


def test_logprobs_are_ranked_and_the_sampled_ones_summed() -> None:
    h = Harness("x", SamplingParams(logprobs=1, max_tokens=5))
    (req,) = h.prompt.children
    h.step({req: ord("a")}, logprobs={ord("b"): -0.5, ord("a"): -1.0})
    (out,) = h.step({req: ord("b")}, logprobs={ord("b"): -0.25})
    c = out.outputs[0]
    assert [(lp.rank, lp.decoded_token) for lp in c.logprobs[0].values()] == [(1, "b"), (2, "a")]
    assert c.cumulative_logprob == -1.25


def test_abort_ends_every_completion_and_forgets_the_prompt() -> None:
    h = Harness("x", SamplingParams(n=2))
    for req in h.prompt.children:
        req.status = RequestStatus.FINISHED_ABORTED
    assert h.processor.requests("p") == h.prompt.children
    out = h.processor.abort("p", now=4.0)
    assert out.finished and [c.finish_reason for c in out.outputs] == ["abort", "abort"]
    assert all(r.finish_time == 4.0 for r in h.prompt.children) and h.processor.requests("p") is None


def test_the_stop_token_text_is_left_out_unless_asked_for() -> None:
    # A special token shown as text (skip_special_tokens=False) and a plain byte used as a stop token id.
    for params, stop_token, kept in [
        (SamplingParams(max_tokens=9, skip_special_tokens=False), TOK.EOS, "<|eos|>"),
        (SamplingParams(max_tokens=9, stop_token_ids=[ord("!")]), ord("!"), "!"),
    ]:
        for include in (False, True):
            h = Harness("x", replace(params, include_stop_str_in_output=include))
            (req,) = h.prompt.children
            h.step({req: ord("h")})
            (out,) = h.step({req: stop_token}, finish=RequestStatus.FINISHED_STOPPED)
            assert out.finished and out.outputs[0].token_ids == [ord("h"), stop_token]
            assert out.outputs[0].stop_reason == stop_token
            assert out.outputs[0].text == ("h" + kept if include else "h")

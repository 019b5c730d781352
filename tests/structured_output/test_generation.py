"""Constrained generation on `tiny`: random weights, so the grammar alone makes the output well-formed."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import pytest

pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")

from batchserve import SamplingParams  # noqa: E402
from batchserve.engine.llm_engine import LLMEngine  # noqa: E402
from batchserve.entrypoints.llm import LLM  # noqa: E402
from batchserve.outputs import RequestOutput  # noqa: E402
from batchserve.request import StructuredOutputsParams  # noqa: E402
from batchserve.tokenizer import ByteTokenizer  # noqa: E402

EOS = ByteTokenizer.EOS
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "status": {"enum": ["open", "closed"]},
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 4}, "admin": {"type": "boolean"}},
            "required": ["name", "admin"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["id", "status", "owner"],
    "additionalProperties": False,
}
GBNF = r'''
root ::= greeting " " name "!"
greeting ::= "hello" | "hi"
name ::= [a-z] [a-z]? [a-z]? [a-z]?
'''


def is_json_for(schema: dict) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    return check


def full_match(pattern: str) -> Callable[[str], bool]:
    return lambda text: re.fullmatch(pattern, text) is not None


CASES = {  # constraint, its language as a check, outputs drawn
    "choice": (StructuredOutputsParams(choice=["yes", "no", "maybe"]), lambda t: t in ("yes", "no", "maybe"), 100),
    "regex": (StructuredOutputsParams(regex=r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), full_match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
              100),
    "gbnf": (StructuredOutputsParams(grammar=GBNF), full_match(r"(hello|hi) [a-z]{1,4}!"), 100),
    "json": (StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True), is_json_for(SCHEMA), 32),
}


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("tiny", kv_cache_memory="16MiB")


def params(constraint: StructuredOutputsParams | None, seed: int, **kw: object) -> SamplingParams:
    kw.setdefault("max_tokens", 120)
    return SamplingParams(temperature=1.0, seed=seed, structured_outputs=constraint, **kw)  # type: ignore[arg-type]


def texts(outs: list[RequestOutput]) -> list[str]:
    return [c.text for o in outs for c in o.outputs]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_output_is_in_the_language_and_unconstrained_ones_are_not(llm: LLM, case: str) -> None:
    constraint, in_language, num = CASES[case]
    prompts = [f"request {i}:" for i in range(num)]
    outs = llm.generate(prompts, [params(constraint, seed) for seed in range(num)], use_tqdm=False)
    bad = [t for t in texts(outs) if not in_language(t)]
    assert not bad, bad
    assert all(c.finish_reason == "stop" for o in outs for c in o.outputs)
    assert len(set(texts(outs))) > 1  # sampled, not forced: the grammar leaves choices
    free = llm.generate(prompts, [params(None, seed, max_tokens=40) for seed in range(num)], use_tqdm=False)
    assert sum(map(in_language, texts(free))) <= num // 8  # the constraint does the work


def test_unconstrained_rows_of_a_mixed_batch_sample_what_they_sample_alone(llm: LLM) -> None:
    free = [params(None, seed, max_tokens=12, ignore_eos=True) for seed in range(4)]
    constrained = [params(CASES[c][0], 10 + k) for k, c in enumerate(sorted(CASES))]
    alone_free = llm.generate([f"free {i}" for i in range(4)], free, use_tqdm=False)
    alone_constrained = llm.generate([f"c {i}" for i in range(4)], constrained, use_tqdm=False)
    mixed = llm.generate([f"free {i}" for i in range(4)] + [f"c {i}" for i in range(4)], free + constrained,
                         use_tqdm=False)
    tokens = [o.outputs[0].token_ids for o in mixed]
    assert tokens == [o.outputs[0].token_ids for o in alone_free + alone_constrained]


def test_a_complete_grammar_stops_even_at_max_tokens(llm: LLM) -> None:
    (out,) = llm.generate("x", params(StructuredOutputsParams(choice=["yes"]), 0, max_tokens=3), use_tqdm=False)
    (c,) = out.outputs
    assert (c.text, c.finish_reason, c.stop_reason) == ("yes", "stop", None)  # nothing may follow "yes"


def test_an_accepting_grammar_allows_eos(llm: LLM) -> None:
    outs = llm.generate(["x"] * 4, [params(StructuredOutputsParams(regex="[0-9]+"), s, max_tokens=80)
                                     for s in range(4)], use_tqdm=False)
    for c in (o.outputs[0] for o in outs):
        assert c.text.isdigit() and c.finish_reason == "stop" and c.token_ids[-1] == c.stop_reason == EOS


def test_logprobs_are_over_the_tokens_the_grammar_allows(llm: LLM) -> None:
    (out,) = llm.generate("x", params(StructuredOutputsParams(choice=["yes", "no"]), 1, logprobs=5), use_tqdm=False)
    first = out.outputs[0].logprobs[0]
    finite = {t: lp.logprob for t, lp in first.items() if math.isfinite(lp.logprob)}
    assert set(finite) == {ord("y"), ord("n")} and math.isclose(sum(map(math.exp, finite.values())), 1, rel_tol=1e-5)


def test_invalid_constraints_fail_their_request_only() -> None:
    engine = LLMEngine("tiny", kv_cache_memory="16MiB")
    engine.add_request("ok", "a", params(StructuredOutputsParams(choice=["yes", "no"]), 0))
    engine.step()
    for bad, message in [(StructuredOutputsParams(json={"type": "nope"}), "invalid structured_outputs.json"),
                         (StructuredOutputsParams(regex="(?<=a)b"), "look-around"),
                         (StructuredOutputsParams(grammar="root ::= ("), "invalid structured_outputs.grammar")]:
        with pytest.raises(ValueError, match=message):
            engine.add_request("bad", "a", params(bad, 0, n=2))
        assert "bad" not in engine.output_processor
    engine.add_request("ok2", "b", params(StructuredOutputsParams(regex="[ab]{3}"), 0))
    finals = {}
    while engine.has_unfinished():
        finals.update({o.request_id: o.outputs[0].text for o in engine.step() if o.finished})
    assert finals["ok"] in ("yes", "no") and re.fullmatch("[ab]{3}", finals["ok2"])


def test_preempted_constrained_requests_produce_the_same_valid_output() -> None:
    constraint, in_language, _ = CASES["json"]
    prompts = [[256] + list(range(40 + 20 * i, 60 + 20 * i)) for i in range(6)]

    def run(kv_cache_memory: str) -> tuple[list[list[int]], int]:
        engine = LLMEngine("tiny", kv_cache_memory=kv_cache_memory, max_num_seqs=8)
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, params(constraint, i, max_tokens=150))
        requests = [engine.output_processor.requests(str(i))[0] for i in range(len(prompts))]
        finals: dict[str, RequestOutput] = {}
        while engine.has_unfinished():
            finals.update({o.request_id: o for o in engine.step() if o.finished})
        outs = [finals[str(i)].outputs[0] for i in range(len(prompts))]
        assert all(in_language(c.text) and c.finish_reason == "stop" for c in outs)
        return [c.token_ids for c in outs], sum(r.num_preemptions for r in requests)

    roomy, roomy_preemptions = run("16MiB")
    tight, tight_preemptions = run("96KiB")  # 12 blocks of 16 tokens for 6 requests of ~100 tokens
    assert roomy_preemptions == 0 and tight_preemptions > 0
    assert tight == roomy


def test_n_completions_share_the_prompt_and_each_follows_the_grammar() -> None:
    engine = LLMEngine("tiny", kv_cache_memory="16MiB")
    prompt = [256] + list(range(1, 48))  # full blocks the held completions hit in the prefix cache
    engine.add_request("n", prompt, params(CASES["regex"][0], 7, n=4))
    assert engine.siblings.num_held == 3
    children = engine.output_processor.requests("n")
    final = None
    while engine.has_unfinished():
        final = next((o for o in engine.step() if o.finished), final)
    assert all(CASES["regex"][1](c.text) for c in final.outputs)
    assert len({c.text for c in final.outputs}) > 1
    assert all(child.num_cached_tokens > 0 for child in children[1:])

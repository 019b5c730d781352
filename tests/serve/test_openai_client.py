"""The official `openai` client against a live server: completions and chat, streaming and not."""

from __future__ import annotations

import openai
import pytest

from batchserve.request import SamplingParams


@pytest.fixture(scope="module")
def oa(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _streamed_completion(oa: openai.OpenAI, **kw) -> tuple[dict[int, str], dict[int, str], object]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in oa.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return texts, finish, usage


def test_models_lists_the_served_model(oa):
    assert [m.id for m in oa.models.list().data] == ["tiny"]


def test_completion_matches_the_engine(oa, server):
    resp = oa.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0)
    engine = server.llm.get_tokenizer()
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    (choice,) = resp.choices
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage.prompt_tokens == len(engine.encode("Hello there"))
    assert 1 <= resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize("n", [1, 3])
def test_streamed_completion_equals_non_streamed_for_the_same_seed(oa, n):
    kw = dict(model="tiny", prompt="Once upon a time", max_tokens=24, temperature=1.0, seed=7, n=n)
    full = oa.completions.create(**kw)
    texts, finish, usage = _streamed_completion(oa, **kw)
    assert {c.index: c.text for c in full.choices} == texts
    assert {c.index: c.finish_reason for c in full.choices} == finish
    assert usage.completion_tokens == full.usage.completion_tokens
    if n > 1:
        assert len(set(texts.values())) > 1, "n completions with seeds seed+k should differ"


def test_chat_streamed_equals_non_streamed(oa):
    kw = dict(model="tiny", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
              max_tokens=20, seed=3, temperature=0.8, n=2)
    full = oa.chat.completions.create(**kw)
    assert full.object == "chat.completion"
    assert all(c.message.role == "assistant" for c in full.choices)
    streamed: dict[int, str] = {}
    roles = set()
    usage = None
    for chunk in oa.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for ch in chunk.choices:
            roles.add(ch.delta.role)
            streamed[ch.index] = streamed.get(ch.index, "") + (ch.delta.content or "")
    assert "assistant" in roles
    assert streamed == {c.index: c.message.content for c in full.choices}
    assert usage.total_tokens == full.usage.total_tokens


def test_stop_string_cuts_the_text_streamed_and_not(oa, server):
    # Find a stop string the greedy output really contains, then ask again with it.
    free = oa.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0).choices[0].text
    stop = next(free[i:i + 2] for i in range(5, len(free) - 1) if free[i:i + 2].isprintable() and free[i:i + 2].strip())
    cut = free[: free.index(stop)]
    resp = oa.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0, stop=[stop])
    assert resp.choices[0].text == cut
    assert resp.choices[0].finish_reason == "stop"
    texts, finish, _ = _streamed_completion(oa, model="tiny", prompt="abc", max_tokens=40, temperature=0, stop=stop)
    assert texts == {0: cut} and finish == {0: "stop"}


def test_completion_logprobs(oa):
    resp = oa.completions.create(model="tiny", prompt="xyz", max_tokens=6, temperature=0, logprobs=3)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == resp.usage.completion_tokens
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert token_lp <= 0 and len(top) <= 3
        # Greedy: the sampled token is the most likely. (Not `==`: byte tokens that decode to the same
        # replacement character share one key of the dict, as they would in OpenAI's format.)
        assert token_lp >= max(top.values()) - 1e-6
    assert lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_streamed_and_not(oa):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "q"}], max_tokens=5, temperature=0,
              logprobs=True, top_logprobs=2)
    full = oa.chat.completions.create(**kw)
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)
    streamed = [t for chunk in oa.chat.completions.create(stream=True, **kw) for ch in chunk.choices
                if ch.logprobs for t in ch.logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]


def test_batch_of_prompts_gets_one_choice_per_prompt_and_completion(oa):
    resp = oa.completions.create(model="tiny", prompt=["a", "bb"], max_tokens=3, n=2, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.usage.prompt_tokens == 2 + 3  # byte tokens plus BOS each
    assert resp.choices[0].text == resp.choices[1].text  # greedy: both completions of a prompt agree


def test_bad_requests_raise_openai_errors_naming_the_field(oa):
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny", prompt="x", temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model="gpt-9", prompt="x")


def test_prompt_longer_than_the_context_states_both_lengths(oa, server):
    limit = server.llm.model_config.max_model_len
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny", prompt="a" * (limit + 10), max_tokens=1)
    msg = e.value.body["message"]
    assert str(limit + 11) in msg and str(limit) in msg and e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a" * limit}])
    assert str(limit) in e.value.body["message"] and "longer than the model's context" in e.value.body["message"]


def test_defaults_are_the_models_generation_defaults(server):
    assert server.llm.default_sampling_params == SamplingParams()


def test_logit_bias_bans_a_token(oa):
    kw = dict(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0)
    free = oa.completions.create(**kw).choices[0].text
    banned = ord(free[0])  # the tiny model's tokens are bytes: the first character is a token id
    biased = oa.completions.create(**kw, logit_bias={str(banned): -100}).choices[0].text
    assert chr(banned) not in biased
    sampled = oa.completions.create(**{**kw, "temperature": 1.0}, seed=3, n=4, logit_bias={str(banned): -100})
    assert all(chr(banned) not in c.text for c in sampled.choices)


def test_completions_echo_returns_the_prompt_and_its_logprobs(oa):
    resp = oa.completions.create(model="tiny", prompt="Echo me", max_tokens=3, temperature=0, echo=True, logprobs=2)
    (choice,) = resp.choices
    assert choice.text.startswith("Echo me")
    lp = choice.logprobs
    prompt_len = resp.usage.prompt_tokens
    assert len(lp.tokens) == prompt_len + resp.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens[prompt_len:]) == choice.text[len("Echo me"):]
    texts, _, _ = _streamed_completion(oa, model="tiny", prompt="Echo me", max_tokens=3, temperature=0, echo=True)
    assert texts[0] == choice.text


def test_continuous_usage_stats_put_usage_in_every_chunk(oa):
    chunks = list(oa.completions.create(model="tiny", prompt="hi", max_tokens=4, temperature=0, stream=True,
                                        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert chunks and all(c.usage is not None for c in chunks)
    assert chunks[-1].usage.completion_tokens == 4

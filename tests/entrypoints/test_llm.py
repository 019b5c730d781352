"""`LLM.generate` on the built-in tiny model: API shape, sampling options, stops, logprobs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve import SamplingParams  # noqa: E402
from batchserve.entrypoints.cli import main  # noqa: E402
from batchserve.entrypoints.llm import LLM  # noqa: E402


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("tiny", kv_cache_memory="64MiB")


def test_one_result_per_prompt_in_order_for_mixed_prompt_kinds(llm: LLM) -> None:
    prompts = ["hello world", [256, 104, 105], {"prompt": "abc"}, {"prompt_token_ids": [256, 1, 2, 3]}]
    outs = llm.generate(prompts, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True), use_tqdm=False)
    assert len(outs) == 4
    assert outs[0].prompt == "hello world" and outs[0].prompt_token_ids == llm.get_tokenizer().encode("hello world")
    assert outs[1].prompt_token_ids == [256, 104, 105] and outs[1].prompt is None
    for out in outs:
        (c,) = out.outputs
        assert len(c.token_ids) == 5 and c.finish_reason == "length" and isinstance(c.text, str)


def test_greedy_is_deterministic_and_one_params_per_prompt(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    a = llm.generate(["x", "yy"], greedy, use_tqdm=False)
    b = llm.generate(["x", "yy"], [greedy, SamplingParams(max_tokens=3, ignore_eos=True)], use_tqdm=False)
    assert a[0].outputs[0].token_ids == b[0].outputs[0].token_ids
    assert len(b[1].outputs[0].token_ids) == 3
    with pytest.raises(ValueError, match="2 prompts"):
        llm.generate(["x", "y"], [greedy], use_tqdm=False)


def test_seeded_sampling_is_batch_invariant(llm: LLM) -> None:
    """A request's seeded output is the same alone and among 32 other requests."""
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    alone = llm.generate(["the same prompt"], params, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(max_tokens=30, temperature=0.8, seed=i, ignore_eos=True) for i in range(32)]
    batch = llm.generate([f"other prompt {i}" * (i % 5 + 1) for i in range(32)] + ["the same prompt"],
                         others + [params], use_tqdm=False)
    assert batch[-1].outputs[0].token_ids == alone
    other_seed = llm.generate(["the same prompt"], SamplingParams(max_tokens=24, seed=99, ignore_eos=True),
                              use_tqdm=False)[0].outputs[0].token_ids
    assert other_seed != alone


def test_n_completions_share_the_prompt(llm: LLM) -> None:
    out = llm.generate("share me", SamplingParams(n=3, max_tokens=12, seed=5, ignore_eos=True), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_stop_string_spanning_tokens_truncates_the_text(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, skip_special_tokens=True)
    full = llm.generate("stop test", greedy, use_tqdm=False)[0].outputs[0]
    text = full.text
    assert len(text) >= 12
    stop = text[5:9]  # four byte tokens: spans token boundaries
    start = text.find(stop)
    out = llm.generate("stop test", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == text[:start]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert len(out.token_ids) < len(full.token_ids)
    kept = llm.generate("stop test", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[stop],
                                                    include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == text[:start] + stop


def test_logprobs_hold_top_n_and_the_sampled_token(llm: LLM) -> None:
    out = llm.generate("lp", SamplingParams(max_tokens=6, logprobs=3, seed=0, ignore_eos=True), use_tqdm=False)[0]
    c = out.outputs[0]
    assert len(c.logprobs) == len(c.token_ids) == 6
    total = 0.0
    for tok, step in zip(c.token_ids, c.logprobs):
        assert tok in step and 3 <= len(step) <= 4
        ranked = sorted(step.values(), key=lambda lp: lp.rank)
        assert all(a.logprob >= b.logprob for a, b in zip(ranked, ranked[1:]))
        assert all(lp.logprob <= 0 for lp in step.values())
        total += step[tok].logprob
    assert c.cumulative_logprob == pytest.approx(total)


def test_too_long_prompt_is_a_clear_error_and_nothing_else_runs(llm: LLM) -> None:
    limit = llm.model_config.max_model_len
    with pytest.raises(ValueError, match=r"prompt 1: .*exceeds max_model_len"):
        llm.generate(["fine", [1] * (limit + 1)], SamplingParams(max_tokens=4), use_tqdm=False)
    assert not llm.engine.has_unfinished()
    assert llm.generate("still works", SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)[0].outputs


def test_chat_uses_the_chat_template(llm: LLM) -> None:
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    template = llm.get_tokenizer().apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert "hi" in template
    assert out[0].prompt_token_ids == llm.get_tokenizer().encode(template, add_special_tokens=False)


def test_generate_command(tmp_path, capsys) -> None:
    out = tmp_path / "gen.json"
    assert main(["generate", "--model", "tiny", "--prompt", "hello", "--max-tokens", "4", "--json", str(out)]) == 0
    assert "completion 0" in capsys.readouterr().out
    assert out.exists()


def test_quantization_flag_reaches_the_engine(capsys) -> None:
    assert main(["generate", "--model", "tiny", "--prompt", "hello", "--max-tokens", "2", "--quantization", "int8",
                 "--kv-cache-memory", "4MiB"]) == 0
    assert "completion 0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--model", "tiny", "--prompt", "hello", "--quantization", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, quantize_lm_head", [([], False), (["--quantize-lm-head"], True)])
def test_the_lm_head_flag_reaches_the_engine(flags, quantize_lm_head) -> None:
    from batchserve.entrypoints.cli import build_parser
    from batchserve.entrypoints.common import engine_args

    args = build_parser().parse_args(["generate", "--model", "tiny", "--prompt", "hi", "--quantization", "int4", *flags])
    assert engine_args(args)["quantize_lm_head"] is quantize_lm_head


def test_llm_is_exported_lazily_from_the_package() -> None:
    import subprocess
    import sys

    code = ("import sys, batchserve; assert 'torch' not in sys.modules; "
            "from batchserve import LLM; assert 'torch' in sys.modules and LLM.__name__ == 'LLM'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_numbers_fail_at_the_params_and_the_llm_stays_healthy():
    llm = LLM("tiny", kv_cache_memory="4MiB")
    for bad in ({"seed": 2**70}, {"temperature": float("nan")}, {"top_p": float("inf")},
                {"logit_bias": {3: float("nan")}}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="logit_bias token ids"):
        llm.generate("x", SamplingParams(logit_bias={10**6: 1.0}), use_tqdm=False)
    assert len(llm.generate("x", SamplingParams(max_tokens=3, seed=2**63 - 1, n=2), use_tqdm=False)[0].outputs) == 2


def test_generation_configs_max_new_tokens_is_the_default_max_tokens(monkeypatch) -> None:
    import batchserve.engine.llm_engine as llm_engine

    monkeypatch.setattr(llm_engine, "read_generation_config", lambda path: {"max_new_tokens": 3, "do_sample": False})
    llm = LLM("tiny", device="cpu", kv_cache_memory="4MiB")
    (out,) = llm.generate([[1, 2, 3]], use_tqdm=False)  # no SamplingParams: the checkpoint's defaults
    assert len(out.outputs[0].token_ids) == 3 and out.outputs[0].finish_reason == "length"
    assert llm.default_sampling_params == SamplingParams(temperature=0.0, max_tokens=3)

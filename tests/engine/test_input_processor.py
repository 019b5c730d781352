"""The input side: prompt kinds to token ids, checks before anything is queued, defaults and the `n` fan-out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batchserve.engine.input_processor import InputProcessor, generation_defaults, read_generation_config
from batchserve.request import SamplingParams
from batchserve.tokenizer import ByteTokenizer

EOS = ByteTokenizer.EOS


@pytest.fixture()
def processor() -> InputProcessor:
    return InputProcessor(ByteTokenizer(), vocab_size=ByteTokenizer.vocab_size, eos_token_ids=[EOS])


def test_every_prompt_kind_becomes_token_ids(processor: InputProcessor) -> None:
    ids = ByteTokenizer().encode("hi")
    assert processor.encode("hi") == ids
    assert processor.encode({"prompt": "hi"}) == ids
    assert processor.encode({"prompt_token_ids": (256, 1)}) == [256, 1]
    assert processor.encode([256, 1]) == [256, 1]
    with pytest.raises(ValueError, match="needs 'prompt' or 'prompt_token_ids'"):
        processor.encode({"text": "hi"})
    with pytest.raises(TypeError, match="got float"):
        processor.encode(1.5)
    with pytest.raises(TypeError):
        processor.encode([True, 1])


def test_token_ids_outside_the_vocabulary_are_rejected(processor: InputProcessor) -> None:
    with pytest.raises(ValueError, match=r"token ids \[259\] are outside the vocabulary \[0, 259\)"):
        processor.encode([1, 259])
    with pytest.raises(ValueError, match=r"stop_token_ids \[-1\]"):
        processor.process("a", "hi", SamplingParams(stop_token_ids=[-1]), arrival_time=0.0)


def test_without_a_tokenizer_only_token_ids_are_prompts() -> None:
    processor = InputProcessor(None, vocab_size=10, eos_token_ids=[])
    assert processor.encode([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        processor.encode("hi")


def test_n_fans_out_into_children_with_their_own_ids_and_seeds(processor: InputProcessor) -> None:
    params = SamplingParams(n=3, seed=10, stop_token_ids=[5])
    p = processor.process("r", {"prompt": "hi"}, params, arrival_time=2.0, priority=1, deadline=3.0)
    assert p.request_id == "r" and p.prompt == "hi" and p.prompt_token_ids == ByteTokenizer().encode("hi")
    assert [c.request_id for c in p.children] == ["r#0", "r#1", "r#2"]
    assert [c.sampling_params.seed for c in p.children] == [10, 11, 12]
    for c in p.children:
        assert c.sampling_params.n == 1 and c.sampling_params.stop_token_ids == [5, EOS]
        assert (c.arrival_time, c.priority, c.deadline) == (2.0, 1, 3.0)
        assert c.prompt_token_ids is p.prompt_token_ids
    assert params.stop_token_ids == [5]  # the caller's params are left alone


def test_one_completion_keeps_the_request_id_and_ignore_eos_drops_eos(processor: InputProcessor) -> None:
    p = processor.process("r", [256, 1], SamplingParams(ignore_eos=True), arrival_time=0.0)
    (child,) = p.children
    assert child.request_id == "r" and child.sampling_params.stop_token_ids == [] and p.prompt is None


def test_generation_defaults_come_from_generation_config(tmp_path) -> None:
    assert read_generation_config(None) == read_generation_config(tmp_path) == {}
    assert read_generation_config(tmp_path / "model.gguf") == {}  # a GGUF carries no generation config
    assert generation_defaults({}) == SamplingParams()
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_k": 20, "top_p": None}))
    d = generation_defaults(read_generation_config(tmp_path))
    assert (d.temperature, d.top_k, d.top_p) == (0.6, 20, 1.0)
    assert generation_defaults({"do_sample": False, "temperature": 0.6}).temperature == 0.0


def test_max_new_tokens_becomes_the_default_max_tokens() -> None:
    for sampled in (True, False):
        assert generation_defaults({"do_sample": sampled, "max_new_tokens": 7}).max_tokens == 7
    assert generation_defaults({"max_new_tokens": None}).max_tokens == SamplingParams().max_tokens


def test_the_engine_package_imports_without_torch() -> None:
    code = ("import sys, batchserve.engine; from batchserve.engine import Engine, PromptType, parse_memory; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

"""Bad adapters and bad LoRA requests: each a clear error, and nothing of the call is queued."""

from __future__ import annotations

import json
import shutil

import pytest

from batchserve import LoRARequest, SamplingParams
from batchserve.entrypoints.llm import LLM
from batchserve.lora import LoRAConfig, parse_lora_modules

GREEDY = SamplingParams(max_tokens=4, temperature=0)


@pytest.fixture
def llm(llama_family) -> LLM:
    return LLM(str(llama_family.path), skip_tokenizer_init=True, kv_cache_memory="4MiB", enable_lora=True,
               max_loras=2, max_lora_rank=8)


def copy_adapter(llama_family, name: str, tmp_path) -> LoRARequest:
    good = llama_family.lora(name)
    shutil.copytree(good.lora_path, tmp_path / name)
    return LoRARequest(f"bad-{name}", 99, str(tmp_path / name))


def rejected(llm: LLM, lora: LoRARequest | None, match: str) -> None:
    """The adapter fails the whole call (the good first prompt included) and leaves the engine empty."""
    with pytest.raises(ValueError, match=match):
        llm.generate([[1, 2, 3], [4, 5, 6]], GREEDY, use_tqdm=False, lora_request=[None, lora])
    assert not llm.llm_engine.has_unfinished() and not llm.scheduler.waiting and not llm.scheduler.running
    assert llm.generate([1, 2, 3], GREEDY, use_tqdm=False)[0].outputs[0].token_ids  # and it still serves


def test_rank_above_max_lora_rank(llm, llama_family) -> None:
    rejected(llm, llama_family.lora("r16-mlp"), r"rank 16 exceeds max_lora_rank=8")


def test_target_module_the_model_lacks(llm, llama_family, tmp_path) -> None:
    bad = copy_adapter(llama_family, "r4-qv", tmp_path)
    config_path = tmp_path / "r4-qv" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "target_modules": ["q_proj", "c_attn"]}))
    rejected(llm, bad, r"targets c_attn, which the base model lacks")


def test_weight_of_a_module_the_model_lacks(llm, llama_family, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    bad = copy_adapter(llama_family, "r4-qv", tmp_path)
    path = tmp_path / "r4-qv" / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = next(iter(tensors.values())).clone()
    save_file(tensors, path)
    rejected(llm, bad, r"layers\.7\..*targets a module the base model lacks")


def test_corrupt_weights_file(llm, llama_family, tmp_path) -> None:
    bad = copy_adapter(llama_family, "r4-qv", tmp_path)
    (tmp_path / "r4-qv" / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    rejected(llm, bad, r"cannot read adapter_model\.safetensors")


def test_missing_directory_and_broken_config(llm, llama_family, tmp_path) -> None:
    rejected(llm, LoRARequest("nowhere", 5, str(tmp_path / "nowhere")), r"no such directory")
    bad = copy_adapter(llama_family, "r4-qv", tmp_path)
    (tmp_path / "r4-qv" / "adapter_config.json").write_text("{not json")
    rejected(llm, bad, r"cannot read adapter_config\.json")


def test_unsupported_peft_options_are_refused(llm, llama_family, tmp_path) -> None:
    bad = copy_adapter(llama_family, "r4-qv", tmp_path)
    config_path = tmp_path / "r4-qv" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
    rejected(llm, bad, r"uses DoRA")


def test_one_id_names_one_adapter(llm, llama_family) -> None:
    llm.generate([1, 2, 3], GREEDY, use_tqdm=False, lora_request=llama_family.lora("r4-qv"))
    other = LoRARequest("other", llama_family.lora("r4-qv").lora_int_id, llama_family.lora("r8-all").lora_path)
    rejected(llm, other, r"lora_int_id 1 already names")


def test_lora_request_without_enable_lora(llama_family) -> None:
    llm = LLM(str(llama_family.path), skip_tokenizer_init=True, kv_cache_memory="4MiB")
    rejected(llm, llama_family.lora("r4-qv"), r"LoRA is off: build the engine with enable_lora=True")


def test_config_and_request_checks() -> None:
    with pytest.raises(ValueError, match="lora_int_id must be an integer >= 1"):
        LoRARequest("a", 0, "/x")
    with pytest.raises(ValueError, match="max_cpu_loras .* must be >= max_loras"):
        LoRAConfig(max_loras=4, max_cpu_loras=2)
    assert [(r.lora_name, r.lora_int_id, r.lora_path) for r in parse_lora_modules(["a=/p/a", "b=/p/b"])] == [
        ("a", 1, "/p/a"), ("b", 2, "/p/b")]
    with pytest.raises(ValueError, match="is not NAME=PATH"):
        parse_lora_modules(["/p/a"])
    with pytest.raises(ValueError, match="names 'a' twice"):
        parse_lora_modules(["a=/p/a", "a=/p/b"])

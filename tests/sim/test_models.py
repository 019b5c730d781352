"""Model catalog: entries, exact parameter counts, lookups by name, file and directory."""

from __future__ import annotations

import json

import pytest

from batchserve.model_config import ModelConfig, ModelConfigError
from batchserve.sim.hardware import CatalogError
from batchserve.sim.models import HF_CONFIGS, MODELS, get_model

REQUIRED = ("llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
            "mistral-7b", "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-72b", "qwen3-8b")


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_entry_parses(name: str) -> None:
    m = MODELS[name]
    assert m.name == name
    assert m.num_attention_heads % m.num_kv_heads == 0
    assert m == ModelConfig(**m.to_dict())
    assert m.num_active_params() <= m.num_params()


@pytest.mark.parametrize(
    ("name", "total"),
    [
        # Published totals (HF safetensors parameter counts).
        ("llama-3.1-8b", 8_030_261_248),
        ("llama-2-7b", 6_738_415_616),
        ("mixtral-8x7b", 46_702_792_704),
        ("qwen2.5-0.5b", 494_032_768),
        ("llama-3.1-70b", 70_553_706_496),
        ("mistral-7b", 7_248_023_552),
        ("qwen2.5-7b", 7_615_616_512),
        ("qwen3-8b", 8_190_735_360),
    ],
)
def test_exact_param_counts(name: str, total: int) -> None:
    assert MODELS[name].num_params() == total


def test_active_params() -> None:
    mixtral = MODELS["mixtral-8x7b"]
    assert mixtral.is_moe and mixtral.num_experts == 8 and mixtral.num_experts_per_tok == 2
    # 6 idle experts of 3 * 4096 * 14336 weights in each of 32 layers.
    assert mixtral.num_active_params() == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336 == 12_879_925_248
    llama = MODELS["llama-3.1-8b"]
    assert not llama.is_moe and llama.num_active_params() == llama.num_params()


def test_parsed_details() -> None:
    assert MODELS["qwen2.5-0.5b"].attention_bias and MODELS["qwen2.5-0.5b"].tie_word_embeddings
    assert MODELS["qwen2.5-0.5b"].head_dim == 64
    assert not MODELS["qwen2.5-7b"].tie_word_embeddings
    assert MODELS["qwen3-8b"].head_dim == 128 and MODELS["qwen3-8b"].qk_norm
    assert not MODELS["qwen3-8b"].attention_bias
    assert MODELS["mistral-7b"].vocab_size == 32768 and MODELS["mistral-7b"].max_model_len == 32768
    assert MODELS["llama-3.1-405b"].num_layers == 126


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("LLAMA-3.1-8B", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
        ("meta-llama/Llama-2-13b-chat-hf", "llama-2-13b"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("Qwen/Qwen3-8B", "qwen3-8b"),
    ],
)
def test_lookup_by_key_and_hf_id(query: str, key: str) -> None:
    assert get_model(query) is MODELS[key]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(CatalogError) as e:
        get_model("mistralai/Mistral-7B-v0.1")  # different vocab from v0.3: must not silently map
    msg = str(e.value)
    assert "Mistral-7B-v0.1" in msg
    for name in REQUIRED:
        assert name in msg


def test_config_file_and_directory(tmp_path) -> None:
    repo = tmp_path / "Llama-3.1-8B"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps(HF_CONFIGS["llama-3.1-8b"]))
    from_dir = get_model(str(repo))
    from_file = get_model(str(repo / "config.json"))
    assert from_dir == from_file
    assert from_dir.name == "Llama-3.1-8B"
    assert from_dir.num_params() == 8_030_261_248
    assert from_dir.to_dict() | {"name": "llama-3.1-8b"} == MODELS["llama-3.1-8b"].to_dict()


def test_missing_field_in_file_names_file(tmp_path) -> None:
    cfg = dict(HF_CONFIGS["qwen3-8b"])
    del cfg["num_attention_heads"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match=r"config\.json.*num_attention_heads"):
        get_model(str(tmp_path))


def test_unreadable_files_are_errors(tmp_path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        get_model(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CatalogError, match="broken.json"):
        get_model(str(tmp_path / "broken.json"))


def test_directory_without_config_is_error(tmp_path) -> None:
    with pytest.raises(CatalogError, match="has no config.json.*llama-3.1-8b"):
        get_model(str(tmp_path))

"""load_model: sharded checkpoints, dtypes, and the errors a user sees for a bad directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from batchserve.jobs.setup import RunSetup
from batchserve.model_config import dtype as dtype_module
from batchserve.models import ModelLoadError, load_model


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_loads(hf_checkpoint, hf_logits, paged_runner, random_tokens):
    hf, path = hf_checkpoint("Qwen2ForCausalLM", save_kwargs={"max_shard_size": "40KB"})
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 2
    model, _, _ = load_model(path)
    tokens = random_tokens(11, 300, seed=3)
    (out,) = paged_runner(model).step([(0, tokens)])
    assert (out - hf_logits(hf, tokens)).abs().max() < 1e-4


def test_index_naming_a_missing_shard(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("Qwen2ForCausalLM", save_kwargs={"max_shard_size": "40KB"})
    broken = copy_checkpoint(path, tmp_path / "broken")
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"missing: {shard.name}"):
        load_model(broken)


def test_bf16_load_is_close_to_fp32(hf_checkpoint, paged_runner, random_tokens):
    _, path = hf_checkpoint("LlamaForCausalLM")
    fp32, _, _ = load_model(path)
    bf16, _, _ = load_model(path, dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    tokens = random_tokens(33, 300, seed=4)
    (ref,) = paged_runner(fp32).step([(0, tokens)])
    (out,) = paged_runner(bf16).step([(0, tokens)])
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.25  # logits span about +-4; bf16 keeps ~3 significant digits
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8  # random weights leave near-ties


@pytest.mark.parametrize(("flags", "served"), [({"avx2", "f16c", "avx512_fp16"}, "float16"),
                                                ({"avx2", "f16c"}, "float32")])
def test_auto_dtype_is_the_checkpoints_unless_the_cpu_emulates_it(hf_checkpoint, tmp_path, monkeypatch, flags,
                                                                  served):
    """A float16 checkpoint on a CPU with (without) float16 instructions; the estimate's twin agrees."""
    monkeypatch.setattr(dtype_module, "cpu_flags", lambda: frozenset(flags))
    _, path = hf_checkpoint("LlamaForCausalLM")
    half = copy_checkpoint(path, tmp_path / "half")
    config = json.loads((half / "config.json").read_text())
    config.pop("torch_dtype", None)
    (half / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    model, model_config, _ = load_model(half)
    assert model_config.dtype == "float16" and next(model.parameters()).dtype == getattr(torch, served)
    assert RunSetup(model=str(half), device="cpu").weight_dtype() == {"float16": "fp16", "float32": "fp32"}[served]
    model, _, _ = load_model(half, dtype="float16")  # asked for by name: obeyed on any CPU
    assert next(model.parameters()).dtype == torch.float16
    model, _, _ = load_model(half, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ModelLoadError, match="dtype 'int8' is not supported"):
        load_model(half, dtype="int8")


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory.*'tiny'"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="Hub names are not downloaded here"):
        load_model("meta-llama/Llama-3.2-1B")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)


def test_no_safetensors_says_convert_pytorch_bin(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("LlamaForCausalLM")
    shutil.copy(path / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors.*pytorch_model.bin is not supported; convert"):
        load_model(tmp_path)


def test_unsupported_architecture_lists_the_supported_ones(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("LlamaForCausalLM")
    other = copy_checkpoint(path, tmp_path / "gpt2")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="unsupported architecture GPT2LMHeadModel; supported: LlamaForCausalLM"):
        load_model(other)


def test_missing_and_unexpected_weights_are_named(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("LlamaForCausalLM")
    edited = copy_checkpoint(path, tmp_path / "edited")
    weights = load_file(edited / "model.safetensors")
    del weights["model.layers.1.self_attn.k_proj.weight"]
    weights["model.layers.1.self_attn.extra.weight"] = torch.zeros(2)
    save_file(weights, edited / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing weights \(1\): model.layers.1.self_attn.k_proj.weight; "
                                             r"unexpected weights \(1\): model.layers.1.self_attn.extra.weight"):
        load_model(edited)


def test_wrong_shape_is_named(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("LlamaForCausalLM")
    edited = copy_checkpoint(path, tmp_path / "edited")
    weights = load_file(edited / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, edited / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"model.norm.weight has shape \(3,\), the config implies \(64,\)"):
        load_model(edited)

"""Loading fails fast and says which file is wrong: damaged weights, a damaged GGUF, a missing tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, models  # noqa: E402

from gguf_files import write_gguf  # noqa: E402

from batchserve.entrypoints.cli import main  # noqa: E402
from batchserve.entrypoints.llm import LLM  # noqa: E402
from batchserve.gguf_file import GGUFError  # noqa: E402
from batchserve.models import ModelLoadError  # noqa: E402

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 8, "max_position_embeddings": 64}


def truncated_checkpoint(path: Path, with_tokenizer: bool) -> Path:
    """config.json plus a model.safetensors cut in half (and a tokenizer.json if asked)."""
    (path / "config.json").write_text(json.dumps(CONFIG))
    save_file({"model.embed_tokens.weight": torch.randn(8, 16)}, path / "model.safetensors")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    if with_tokenizer:
        Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(path / "tokenizer.json"))
    return path


def test_a_truncated_safetensors_file_is_named(tmp_path):
    path = truncated_checkpoint(tmp_path, with_tokenizer=True)
    with pytest.raises(ModelLoadError, match=f"{path / 'model.safetensors'} cannot be read"):
        LLM(str(path), device="cpu", kv_cache_memory="1MiB")


def test_the_tokenizer_is_checked_before_any_weight_is_read(tmp_path):
    path = truncated_checkpoint(tmp_path, with_tokenizer=False)
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        LLM(str(path), device="cpu", kv_cache_memory="1MiB")
    with pytest.raises(ModelLoadError, match="model.safetensors cannot be read"):  # no tokenizer wanted: weights next
        LLM(str(path), device="cpu", kv_cache_memory="1MiB", skip_tokenizer_init=True)


def test_a_corrupt_tokenizer_json_is_named(tmp_path):
    path = truncated_checkpoint(tmp_path, with_tokenizer=False)
    (path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"cannot load the tokenizer {path / 'tokenizer.json'}"):
        LLM(str(path), device="cpu", kv_cache_memory="1MiB")


@pytest.mark.parametrize("damage", ["truncated", "not a gguf"])
def test_a_damaged_gguf_is_named(tmp_path, damage):
    bad = tmp_path / "model.gguf"
    if damage == "truncated":
        write_gguf(bad, truncate=True)
    else:
        bad.write_bytes(b"hello" * 100)
    with pytest.raises(GGUFError, match=f"{bad} is not a readable GGUF file"):
        LLM(str(bad), device="cpu", kv_cache_memory="1MiB")


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_the_cli_prints_one_line_naming_the_file(tmp_path, capsys, kind):
    if kind == "gguf":
        model = named = write_gguf(tmp_path / "model.gguf", truncate=True)
    else:
        model = truncated_checkpoint(tmp_path, with_tokenizer=True)
        named = model / "model.safetensors"
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"custom_id": "a", "prompt": "a", "max_tokens": 1}) + "\n")
    code = main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--model", str(model), "--device", "cpu",
                 "--kv-cache-memory", "1MiB", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("batchserve run: error:") and str(named) in err
    assert err.count("\n") == 1 and "Traceback" not in err

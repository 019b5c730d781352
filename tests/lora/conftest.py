"""The LoRA oracle: small random transformers models and PEFT adapters saved with `save_pretrained`.

Each adapter is built with PEFT on its own copy of the base model, its A and B
randomized (PEFT starts B at zero, which would make every adapter the base
model), saved, and kept unmerged as the reference that batchserve must match.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from random_weights import randomize

from batchserve import LoRARequest

torch.set_num_threads(1)  # tiny models: extra threads only add sync overhead on a shared 2-core machine

VOCAB = 300
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM", {}),
         "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True})}
# rank, alpha, rsLoRA, targets: different ranks, scalings and target sets, fused parts targeted partly
ADAPTERS = {
    "r4-qv": (4, 8, False, ["q_proj", "v_proj"]),
    "r8-all": (8, 16, True, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "r16-mlp": (16, 8, False, ["k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "r8-up": (8, 32, False, ["up_proj", "down_proj"]),
    "r4-ko": (4, 4, True, ["k_proj", "o_proj", "gate_proj"]),
}


@dataclass
class Family:
    """A saved base model and its saved adapters, each with its transformers (+ PEFT) reference."""

    base: torch.nn.Module
    path: Path
    adapters: dict[str, tuple[LoRARequest, torch.nn.Module]]
    vocab: int = VOCAB

    def lora(self, name: str | None) -> LoRARequest | None:
        return None if name is None else self.adapters[name][0]

    def reference(self, name: str | None) -> torch.nn.Module:
        return self.base if name is None else self.adapters[name][1]


def build_family(arch: str, root: Path) -> Family:
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    base = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**SHAPE, **extra)).eval()
    randomize(base)
    base.save_pretrained(root / "base")
    adapters = {}
    for i, (name, (rank, alpha, rslora, targets)) in enumerate(ADAPTERS.items(), 1):
        torch.manual_seed(i)
        config = peft.LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=targets,
                                 lora_dropout=0.0)
        model = peft.get_peft_model(copy.deepcopy(base), config).eval()
        randomize(model, only="lora_")
        model.save_pretrained(root / name)
        adapters[name] = (LoRARequest(name, i, str(root / name)), model)
    return Family(base, root / "base", adapters)


@pytest.fixture(scope="session", params=sorted(ARCHS))
def family(request, tmp_path_factory) -> Family:
    return build_family(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory) -> Family:
    return build_family("llama", tmp_path_factory.mktemp("llama-lru"))


def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new, min_new_tokens=max_new, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(name="hf_greedy")
def _hf_greedy():
    return hf_greedy


def write_adapter(path: Path, rank: int, targets: list[str], seed: int) -> Path:
    """A random PEFT-format LoRA adapter for the built-in `tiny` model, written without PEFT."""
    import json

    from safetensors.torch import save_file

    from batchserve.models.tiny import tiny_config

    c = tiny_config()
    shapes = {"q_proj": (c.hidden_size, c.q_size), "k_proj": (c.hidden_size, c.kv_size),
              "v_proj": (c.hidden_size, c.kv_size), "o_proj": (c.q_size, c.hidden_size),
              "gate_proj": (c.hidden_size, c.intermediate_size), "up_proj": (c.hidden_size, c.intermediate_size),
              "down_proj": (c.intermediate_size, c.hidden_size)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(c.num_layers):
        for name in targets:
            n_in, n_out = shapes[name]
            group = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"base_model.model.model.layers.{layer}.{group}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=g)
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=g)
    path.mkdir(parents=True)
    save_file(tensors, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets, "bias": "none"}))
    return path


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory) -> dict[str, LoRARequest]:
    """Two adapters of the built-in `tiny` model (which has a tokenizer, so front-ends return text)."""
    root = tmp_path_factory.mktemp("tiny-adapters")
    return {"sql": LoRARequest("sql", 1, str(write_adapter(root / "sql", 8, ["q_proj", "v_proj", "down_proj"], 1))),
            "chat": LoRARequest("chat", 2, str(write_adapter(root / "chat", 4, ["o_proj", "up_proj"], 2)))}

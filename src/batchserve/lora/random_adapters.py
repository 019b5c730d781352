"""Random PEFT LoRA adapters of a given rank, written as real adapter directories.

A step's cost does not depend on an adapter's values, only on its shape, so
`calibrate` and `validate` time adapter steps on adapters made here when the
user names none; they are loaded through the same path as any PEFT directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .adapter import CONFIG_FILE, WEIGHTS_FILE
from .request import LoRARequest

_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def write_random_adapters(shapes: dict[str, tuple[int, int]], num_layers: int, root: Path, count: int, rank: int,
                          seed: int = 0) -> list[LoRARequest]:
    """`count` adapters (ids 1..count, named random-K) of `rank` on every module in `shapes` (HF name -> (in, out))."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    requests = []
    for i in range(1, count + 1):
        path = Path(root) / f"random-{i}"
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer in range(num_layers):
            for name, (n_in, n_out) in shapes.items():
                key = f"base_model.model.model.layers.{layer}.{_PARENT[name]}.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=generator) * n_in ** -0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=generator) * rank ** -0.5 / 8
        save_file(tensors, str(path / WEIGHTS_FILE))
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": sorted(shapes)}
        (path / CONFIG_FILE).write_text(json.dumps(config))
        requests.append(LoRARequest(f"random-{i}", i, str(path)))
    return requests

"""Read a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) into per-module A/B tensors.

Everything that can be wrong with an adapter is found here, when it is
loaded, so a bad one fails its own request before anything is queued: a rank
above `max_lora_rank`, a target module the model lacks, a shape that does not
fit the base model, an unreadable file, a PEFT feature the engine does not
implement. The scaling (`lora_alpha / r`, or `/ sqrt(r)` with rsLoRA) is
folded into B once, so a step computes `x A^T B'^T`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .request import LoRARequest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_UNSUPPORTED = {  # PEFT options that change the math; refused rather than silently ignored
    "use_dora": "DoRA", "modules_to_save": "modules_to_save", "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern", "layers_to_transform": "layers_to_transform", "fan_in_fan_out": "fan_in_fan_out",
}


class LoRAError(ValueError):
    """An adapter that cannot be served; the message names the adapter and what is wrong."""


@dataclass
class LoRAAdapter:
    """One loaded adapter: (layer, HF module name) -> (A [r, in], B [out, r] with the scaling folded in)."""

    request: LoRARequest
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def load_adapter(request: LoRARequest, shapes: dict[str, tuple[int, int]], num_layers: int, max_rank: int,
                 dtype: torch.dtype) -> LoRAAdapter:
    """Load and check an adapter against the base model's LoRA-able modules: HF name -> (in, out) features."""
    path = Path(request.lora_path).expanduser()
    where = f"LoRA adapter {request.lora_name!r} ({path})"
    config = _read_config(path, where)
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise LoRAError(f"{where}: adapter_config.json needs an integer r >= 1 and a numeric lora_alpha")
    if rank > max_rank:
        raise LoRAError(f"{where}: rank {rank} exceeds max_lora_rank={max_rank}; raise --max-lora-rank")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        lacking = sorted(set(targets) - set(shapes))
        if lacking:
            raise LoRAError(f"{where}: targets {', '.join(lacking)}, which the base model lacks; "
                            f"LoRA-able modules: {', '.join(sorted(shapes))}")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = _read_tensors(path / WEIGHTS_FILE, where)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None or m.group(2) not in shapes or int(m.group(1)) >= num_layers:
            raise LoRAError(f"{where}: weight {key!r} targets a module the base model lacks (LoRA-able: "
                            f"{', '.join(sorted(shapes))} in layers 0..{num_layers - 1})")
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor
    if not pairs:
        raise LoRAError(f"{where}: {WEIGHTS_FILE} holds no LoRA weights")
    weights = {}
    for (layer, module), ab in sorted(pairs.items()):
        n_in, n_out = shapes[module]
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None:
            raise LoRAError(f"{where}: layer {layer} {module} has lora_{'B' if a is not None else 'A'} missing")
        if tuple(a.shape) != (rank, n_in) or tuple(b.shape) != (n_out, rank):
            raise LoRAError(f"{where}: layer {layer} {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                            f"do not fit rank {rank} and the base model's {n_in} -> {n_out} projection")
        weights[layer, module] = (a.to(dtype), (b.float() * scaling).to(dtype))
    return LoRAAdapter(request, weights)


def _read_config(path: Path, where: str) -> dict:
    if not path.is_dir():
        raise LoRAError(f"{where}: no such directory")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LoRAError(f"{where}: cannot read {CONFIG_FILE}: {err}") from None
    if not isinstance(config, dict):
        raise LoRAError(f"{where}: {CONFIG_FILE} is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"{where}: peft_type is {config['peft_type']!r}; only LORA adapters are served")
    if config.get("bias", "none") != "none":
        raise LoRAError(f"{where}: bias={config['bias']!r} is not supported (only 'none')")
    used = [name for key, name in _UNSUPPORTED.items() if config.get(key)]
    if used:
        raise LoRAError(f"{where}: uses {', '.join(used)}, which this engine does not implement")
    return config


def _read_tensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise LoRAError(f"{where}: no {WEIGHTS_FILE} (only safetensors adapters are read)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise LoRAError(f"{where}: cannot read {WEIGHTS_FILE}: {err}") from None

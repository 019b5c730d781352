"""load_model: a local Hugging Face checkpoint directory, a GGUF file (or "tiny") to a ready CausalLM.

Only safetensors and GGUF are read: they load without executing pickled code
and can be read tensor by tensor, so a checkpoint never sits in memory twice.
There is no hub download here; pass a directory that holds the files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..config import QuantizationConfig
from ..gguf_file import is_gguf, open_gguf
from ..model_config import ModelConfig, serving_dtype
from .config import SUPPORTED_DTYPES, ModelLoadError, check_model_config, load_model_config
from .gguf_quantization import gguf_quantized_linears
from .gguf_weights import gguf_tensors
from .linear import prepack_supported
from .llama import CausalLM
from .moe import quantize_moe_model
from .quantization import Int8Linear, quantize_linears
from .tiny import build_tiny, tiny_config

TINY = "tiny"
logger = logging.getLogger(__name__)
_INDEX = "model.safetensors.index.json"


def load_model(model: str | os.PathLike, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
               prepack: bool = True, quantization: str | QuantizationConfig | None = None,
               row_major_gemv: bool = False) -> tuple[CausalLM, ModelConfig, Path | None]:
    """(model in eval mode without grad, its config, its directory or GGUF file, or None for tiny).

    prepack: on CPU, pack the projection weights for oneDNN where this build
    supports it (models/linear.py); False keeps torch's default linear.
    row_major_gemv: with prepack, keep the plain weights too for compiled
    one-row decode steps (CompilationConfig.row_major_gemv), where half the
    free memory holds them.
    quantization: a method name or a QuantizationConfig; "int8" / "int4"
    quantize the decoder layers' projections at load (models/quantization.py),
    "gguf" runs a GGUF file's quantized blocks (models/gguf_quantization.py);
    the LM head runs int8 if config.quantize_lm_head; the
    embedding lookup stays in `dtype`.
    """
    try:
        config = quantization if isinstance(quantization, QuantizationConfig) else QuantizationConfig(quantization)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    if config.method == "gguf" and not is_gguf(model):
        raise ModelLoadError(f"quantization 'gguf' runs a GGUF file's own quantized weights, and {str(model)!r} is "
                             "not a .gguf file; use int8 or int4 to quantize it at load")
    net, model_config, path = _build(model, dtype, device)
    if config.method == "gguf" and model_config.is_moe:  # its expert tensors have no quantized path yet
        raise ModelLoadError(f"quantization 'gguf' is not supported for MoE models ({model_config.architecture}) "
                             f"yet; load {model_config.name} with int8 or int4, or unquantized")
    if config.method == "gguf":
        gguf_quantized_linears(net.model, open_gguf(path), model_config)
    elif config.method is not None:
        (quantize_moe_model if model_config.is_moe else quantize_linears)(net.model, config)
    if config.method is not None and config.quantize_lm_head:
        net.lm_head = Int8Linear(net.model.embed_tokens.weight if net.lm_head is None else net.lm_head.weight, None)
    if prepack and prepack_supported(net.dtype, net.device):
        # what quantization left as nn.Linear: GGUF's float projections, an unquantized head
        net.prepack_weights(row_major_gemv and _room_for_row_major_copy(net))
    return net, model_config, path


def _room_for_row_major_copy(net: CausalLM) -> bool:
    """Whether a second copy of the float projection weights (an untied LM head's too) fits in half the free memory
    (yes where the system does not say how much is free)."""
    copy = sum(m.weight.nbytes for m in net.modules() if isinstance(m, nn.Linear))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # no such sysconf name here (macOS has no SC_AVPHYS_PAGES)
        return True
    if 2 * copy <= free:
        return True
    logger.warning("row_major_gemv: skipped; the second copy of the projection weights (%.1f GiB) would take more "
                   "than half the free memory (%.1f GiB), so one-row compiled decode steps run oneDNN's packed GEMM",
                   copy / 2**30, free / 2**30)
    return False


def _build(model: str | os.PathLike, dtype: str | torch.dtype,
           device: str | torch.device) -> tuple[CausalLM, ModelConfig, Path | None]:
    if str(model) == TINY:
        config = tiny_config()
        return build_tiny(resolve_dtype(dtype, config, device), device), config, None
    if is_gguf(model):
        return _build_gguf(Path(model).expanduser(), dtype, device)
    path = Path(model).expanduser()
    if not path.is_dir():
        hint = (f" Hub names are not downloaded here: fetch it first, e.g. `huggingface-cli download {model} "
                f"--local-dir DIR`, and pass DIR." if str(model).count("/") == 1 and not path.is_absolute() else "")
        raise ModelLoadError(f"model {str(model)!r}: no such directory; pass a local Hugging Face checkpoint "
                             f"directory (config.json + *.safetensors), a .gguf file or {TINY!r}.{hint}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {path} has no config.json")
    generation = _read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else None
    config = load_model_config(_read_json(path / "config.json"), generation, name=path.name)
    shards = safetensors_files(path)
    net = CausalLM(config, dtype=resolve_dtype(dtype, config, device), device=device)
    net.load_weights(_read_tensors(shards))
    return net.eval().requires_grad_(False), config, path


def _build_gguf(path: Path, dtype: str | torch.dtype,
                device: str | torch.device) -> tuple[CausalLM, ModelConfig, Path]:
    """Config from the file's metadata, weights dequantized from its tensors (quantized files load as float32)."""
    file = open_gguf(path)
    config = check_model_config(file.model_config(), str(path))
    net = CausalLM(config, dtype=resolve_dtype(dtype, config, device), device=device)
    net.load_weights(gguf_tensors(file, config.num_attention_heads, config.num_kv_heads, net.dtype))
    return net.eval().requires_grad_(False), config, path


def resolve_dtype(dtype: str | torch.dtype, config: ModelConfig, device: str | torch.device = "cpu") -> torch.dtype:
    """"auto" means the checkpoint's own dtype, but float32 for a 16-bit float this CPU only emulates
    (model_config/dtype.py); strings name float32/bfloat16/float16."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = serving_dtype(config.dtype, str(device)) if dtype == "auto" else str(dtype)
        if name != config.dtype and dtype == "auto":
            logger.info("serving the %s checkpoint in %s: this CPU has no %s instructions (--dtype %s forces it)",
                        config.dtype, name, config.dtype, config.dtype)
    if name not in SUPPORTED_DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use 'auto' or one of {', '.join(SUPPORTED_DTYPES)}")
    return getattr(torch, name)


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's shard files: those the index names, else every *.safetensors in the directory."""
    if (path / _INDEX).is_file():
        weight_map = _read_json(path / _INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{path / _INDEX} has no weight_map")
        shards = [path / name for name in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ModelLoadError(f"{path / _INDEX} names shard files that are missing: {', '.join(missing)}")
        return shards
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        bins = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        hint = (f" It has {', '.join(bins)}: pytorch_model.bin is not supported; convert it to safetensors "
                f"(e.g. load it with transformers and save_pretrained(dir, safe_serialization=True))." if bins else "")
        raise ModelLoadError(f"model directory {path} has no *.safetensors weight files.{hint}")
    return shards


def _read_tensors(shards: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for shard in shards:
        try:
            with safe_open(shard, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as e:  # a truncated or corrupt file; not a ValueError, so name it here
            raise ModelLoadError(f"{shard} cannot be read (truncated or corrupt?): {e}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e

"""The LoRA flags `serve`, `run` and `generate` share: LoRAConfig's fields and --lora-modules NAME=PATH."""

from __future__ import annotations

import argparse
from typing import Any

from ..lora import LoRAConfig, LoRARequest, parse_lora_modules
from .options import ConfigError, add_dataclass_flags, given


def add_lora_flags(p: argparse.ArgumentParser) -> None:
    add_dataclass_flags(p, LoRAConfig, "LoRA adapters")
    p.add_argument(
        "--lora-modules", nargs="+", metavar="NAME=PATH", default=[],
        help="PEFT LoRA adapter directories, each served under NAME (a request's `model`); implies --enable-lora")


def lora_modules(args: argparse.Namespace) -> list[LoRARequest]:
    return parse_lora_modules(args.lora_modules)


def lora_engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """LLMEngine keyword arguments from the LoRA flags; --lora-modules turns LoRA on."""
    values = given(args, LoRAConfig)
    if args.lora_modules:
        if values.get("enable_lora") is False:
            raise ConfigError("--lora-modules needs LoRA on; drop --no-enable-lora")
        values["enable_lora"] = True
    LoRAConfig(**values)  # bad combinations fail here, before a model is loaded
    return values

"""LoRAConfig: the multi-LoRA knobs (vLLM's names), each a flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRAConfig:
    enable_lora: bool = False
    """Serve LoRA adapters on top of the base model, many in one batch."""
    max_loras: int = 1
    """Adapters resident in device slots at once: the most distinct adapters one step can serve."""
    max_lora_rank: int = 16
    """Largest adapter rank accepted; every slot is sized for it."""
    max_cpu_loras: int | None = None
    """Adapters kept loaded in host memory (LRU); None means max_loras. Others are re-read from disk on demand."""

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")

    @property
    def cpu_capacity(self) -> int:
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras

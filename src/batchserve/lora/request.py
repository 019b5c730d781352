"""LoRARequest: which fine-tune a request runs under, shaped like vLLM's (torch-free plain data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRARequest:
    """A PEFT LoRA adapter directory and the names it goes by.

    `lora_int_id` identifies the adapter everywhere inside the engine (device
    slots, the host cache, prefix-cache block hashes); it must be >= 1 and
    name one path only.
    """

    lora_name: str
    lora_int_id: int
    lora_path: str

    def __post_init__(self) -> None:
        if not isinstance(self.lora_int_id, int) or isinstance(self.lora_int_id, bool) or self.lora_int_id < 1:
            raise ValueError(f"LoRARequest {self.lora_name!r}: lora_int_id must be an integer >= 1, "
                             f"got {self.lora_int_id!r}")
        if not self.lora_name:
            raise ValueError("LoRARequest: lora_name must be non-empty")


def parse_lora_modules(specs: list[str]) -> list[LoRARequest]:
    """`name=path` strings (the --lora-modules flag) to LoRARequests with ids 1, 2, ... in order."""
    requests: list[LoRARequest] = []
    for i, spec in enumerate(specs, 1):
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules entry {spec!r} is not NAME=PATH")
        if any(r.lora_name == name for r in requests):
            raise ValueError(f"--lora-modules names {name!r} twice")
        requests.append(LoRARequest(name, i, path))
    return requests

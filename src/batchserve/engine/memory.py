"""How many KV cache blocks the engine gets: memory sizes from user strings, budgets on CPU and GPU.

Torch-free: the caller reads the GPU's free and total memory, so the sizing
rules are testable on any machine.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}

CPU_KV_CACHE_MEMORY = 2**30
"""KV cache bytes on CPU when `kv_cache_memory` is not given (a CPU has no free-memory figure to share)."""


def parse_memory(value: int | float | str) -> int:
    """Bytes from 1073741824, 1e9, "512MiB" or "2GiB"."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size {value!r} not understood; write bytes or e.g. 512MiB, 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def num_kv_blocks(
    kv_cache_memory: int | float | str | None, gpu_memory_utilization: float, bytes_per_block: int,
    gpu_memory: tuple[int, int] | None,
) -> int:
    """Blocks in an explicit budget, else in the GPU's share left after what is loaded, else in the CPU default.

    `gpu_memory` is the GPU's (free, total) bytes, None on CPU. Raises
    ValueError when the budget holds no block, saying which knob to turn.
    """
    if kv_cache_memory is not None:
        budget = parse_memory(kv_cache_memory)
    elif gpu_memory is not None:
        free, total = gpu_memory
        budget = int(total * gpu_memory_utilization) - (total - free)
        if budget < bytes_per_block:
            raise ValueError(
                f"gpu_memory_utilization={gpu_memory_utilization} allows {total * gpu_memory_utilization / 2**30:.1f} "
                f"GiB of the GPU's {total / 2**30:.1f} GiB, but {(total - free) / 2**30:.1f} GiB are in use already "
                "(this model's weights, other engines or processes); raise gpu_memory_utilization, free the other "
                "users, or give the KV cache an explicit size with kv_cache_memory="
            )
    else:
        budget = CPU_KV_CACHE_MEMORY
    num_blocks = budget // bytes_per_block
    if num_blocks < 1:
        raise ValueError(
            f"the KV cache budget ({budget / 2**20:.1f} MiB) holds no block of {bytes_per_block / 2**20:.2f} MiB; "
            "give more with kv_cache_memory="
        )
    return num_blocks

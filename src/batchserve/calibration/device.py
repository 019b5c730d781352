"""What one device can do and what it is called: matmul and memory peaks, memory size, a readable name."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..models.linear import PackedLinear
from ..sim.hardware import HARDWARE, Hardware

WEIGHT_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
"""The cost model's name of each torch weight dtype the engine runs."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(device: torch.device, dtype: torch.dtype, packed: bool = False) -> float:
    """Best-of-5 FLOP/s of large square products: torch.mm, or against a oneDNN-packed weight
    (`packed`), the GEMM the CPU engine's linear layers run (models/linear.py)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    product = PackedLinear(b, None) if packed else (lambda x: x @ b)
    return 2 * n**3 / _best_time(lambda: product(a), device, repeat=5)


def measure_peaks(device: torch.device, dtype: torch.dtype, packed: bool = False) -> tuple[float, float]:
    """(matmul FLOP/s, memory bytes/s): best of several large square products and large copies."""
    return matmul_flops(device, dtype, packed), memory_bandwidth(device)


def memory_bandwidth(device: torch.device) -> float:
    """Best-of-5 bytes/s of a large copy (read + write), far beyond any cache."""
    numel = (1 << 30 if device.type == "cuda" else 1 << 26) // 4
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_time(lambda: dst.copy_(src), device, repeat=5)


def device_memory_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    raise OSError("cannot read the memory size from /proc/meminfo")


CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}  # sysfs cache sizes: "32768K"


def last_level_cache_bytes(device: torch.device, caches: Path = CPU_CACHES) -> float:
    """A CPU's largest-level cache as the first core sees it (its L3, shared by the cores), bytes; 0 on a GPU or
    where the kernel does not say (the cost model then has no K/V spill tier)."""
    if device.type != "cpu":
        return 0.0
    best = (0, 0.0)
    for index in caches.glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
            value = float(size[:-1]) * _SIZE_UNITS[size[-1]] if size[-1:] in _SIZE_UNITS else float(size or 0)
        except (OSError, ValueError):  # unreadable or unparsable: that cache says nothing
            continue
        best = max(best, (level, value))
    return best[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or "CPU")
    return f"{model} ({torch.get_num_threads()} threads)"


def catalog_match(name: str) -> Hardware | None:
    """The catalog entry of a recognised GPU, for the figures a single device cannot measure (its links)."""
    key = name.lower()
    for hw in HARDWARE.values():
        words = hw.description.lower().replace("nvidia ", "").replace("amd ", "").split()
        if words and words[0] in key and hw.name.split("-")[0] in key:
            return hw
    return None

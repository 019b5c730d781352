"""The dtype "auto" serves a checkpoint in: its own, except a 16-bit float that this CPU only emulates.

On a CPU without bfloat16 (float16) instructions, PyTorch's CPU kernels
convert the 16-bit operands to float32 and back on every call: on an AVX2
EPYC (no AVX-512), a 64-row bfloat16 GEMM of SmolLM2's shape took 8.2 ms
against float32's 1.2 ms (bench/RESULTS.md, session 13). So there "auto"
serves a bfloat16 or float16 checkpoint in float32, as transformers' default
does; an explicit --dtype bfloat16 is still obeyed. The engine's loader and
the estimate's twin both ask `serving_dtype`, so they cannot diverge.
Torch-free: the CPU's flags come from /proc/cpuinfo; where it cannot be read
(not Linux), the checkpoint's dtype is kept.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NATIVE_CPU_FLAGS = {
    "bfloat16": ("avx512_bf16", "amx_bf16", "bf16"),  # x86 AVX-512 / AMX; AArch64's "bf16" feature
    "float16": ("avx512_fp16", "amx_fp16", "fphp"),  # x86 AVX512-FP16 / AMX-FP16; AArch64's half-precision FP
}
"""Any of these CPU flags means the dtype's GEMMs run natively (in /proc/cpuinfo's "flags" or "Features")."""


@functools.cache
def cpu_flags(path: Path = CPUINFO) -> frozenset[str] | None:
    """This CPU's feature flags, or None where they cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, AArch64
            flags.update(value.split())
    return frozenset(flags) or None


def emulated_on_cpu(dtype: str, flags: frozenset[str] | None) -> bool:
    """Whether `dtype` is a 16-bit float that a CPU with `flags` has no instructions for (None: unknown, no)."""
    native = NATIVE_CPU_FLAGS.get(dtype)
    return native is not None and flags is not None and not flags.intersection(native)


def serving_dtype(checkpoint_dtype: str, device: str, flags: frozenset[str] | None = None) -> str:
    """The dtype "auto" means for a checkpoint stored in `checkpoint_dtype` on `device` ("cpu", "cuda:0", ...);
    `flags` default to this machine's."""
    on_cpu = device.split(":")[0] == "cpu"
    if on_cpu and emulated_on_cpu(checkpoint_dtype, cpu_flags() if flags is None else flags):
        return "float32"
    return checkpoint_dtype

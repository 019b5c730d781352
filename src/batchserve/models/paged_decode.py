"""The "cpp" attention backend's CPU kernels (paged_decode.cpp): K/V read in place from the block pool.

The plain-torch backend copies every decode row's keys and values into a padded
tensor for SDPA: on the 2-core CPU those gathers were 27% of a 64-row fp32 step
and SDPA over the copies 29% (bench/RESULTS.md, session 27). The kernel reads
each row's visible keys where they lie, through the same slot indices and mask
the torch backend builds (attention._plan), so nothing about the step's layout
changes but the copy. It is C++ built on first use with this machine's compiler
and ISA (torch.utils.cpp_extension caches the build under TORCH_EXTENSIONS_DIR,
8-25 s once), and registered as the op batchserve::paged_decode, which compiled
decode graphs call like any other op.

Prompt chunks go through batchserve::paged_prefill, a flash-style kernel over the
sequence's slots (its context and the chunk itself, written before it attends):
gather + SDPA spent 90% of a 20-token chunk over 600 cached keys in SDPA at about
60 GFLOP/s, and the kernel runs such chunks 1.3-1.9x faster, fresh 512-token
prompts included (bench/RESULTS.md, session 30). It has AVX-512 (BW, VL) code for
head_dim 64 and 128 only; elsewhere chunks keep the gather (prefill_in_place).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_decode.cpp")
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
"""-O3 for the machine that runs it; -ffast-math lets the compiler vectorize the dot products (reassociated sums)
and the softmax's exp (glibc's vector math); the kernel holds no infinities or NaNs for it to assume away. Only
compile flags: linked without it, the library does not switch the process's floats to flush-to-zero."""
BUILD_NOTICE_AFTER_S = 1.0
"""A load still going after this long is a build (a cached one loads in 0.04 s): say so, or a fresh machine's
first run pauses 8-25 s unexplained."""


class KernelBuildError(OSError):
    """The kernel could not be built on this machine (no compiler or headers): an environment error, which the
    CLI reports in one line, as it does a missing file."""


@functools.cache
def load_kernel() -> None:
    """Build (or find the cached build of) the kernel and register batchserve::paged_decode; once a process."""
    from torch.utils import cpp_extension

    notice = threading.Timer(BUILD_NOTICE_AFTER_S, logger.info, (
        "building the CPU paged-attention kernel for this machine (once, 8-25 s; --attention-backend torch "
        "skips it)",))
    notice.daemon = True
    notice.start()
    try:
        cpp_extension.load(f"batchserve_paged_decode_{isa_tag()}", [str(SOURCE)], extra_cflags=COMPILE_FLAGS,
                           extra_ldflags=["-fopenmp"], is_python_module=False)
    except (RuntimeError, OSError) as e:  # no compiler, no headers: a build error reads like noise here
        raise KernelBuildError(
            f"the cpp attention backend builds a small C++ kernel on first use and that build failed ({e}); "
            "install a C++ compiler (g++) or use --attention-backend torch") from e
    finally:
        notice.cancel()
    torch.library.register_fake("batchserve::paged_decode")(_fake)


def isa_tag() -> str:
    """A short tag of this CPU's instruction-set flags, in the build's name: a cache shared by machines of other
    CPUs (a network home directory) keeps one build per ISA, never a -march=native binary another CPU lacks."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def _fake(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_slots: torch.Tensor,
          key_mask: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_slots: torch.Tensor,
                 key_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q [D, heads, head_dim], one query per row, against caches [slots, kv_heads, head_dim] at key_slots [D, L]
    where key_mask (L elements a row) is True; returns [D, heads, head_dim] in q's dtype."""
    if not torch.compiler.is_compiling():  # a graph is traced after an eager call, which loaded it
        load_kernel()
    return torch.ops.batchserve.paged_decode(q, k_cache, v_cache, key_slots, key_mask.view(key_slots.shape), scale)


@functools.cache
def prefill_in_place(head_dim: int) -> bool:
    """Whether this machine's build of the kernels attends prompt chunks of this head_dim in place."""
    load_kernel()
    return bool(torch.ops.batchserve.paged_prefill_supported(head_dim))


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_slots: torch.Tensor,
                  context: int, window: int | None, scale: float) -> torch.Tensor:
    """q [n, heads, head_dim], a sequence's chunk at positions context..context + n - 1, against caches
    [slots, kv_heads, head_dim] at key_slots [context + n] (the chunk's own K/V written there already), causal and
    within `window` keys (None: all); returns [n, heads, head_dim] in q's dtype."""
    load_kernel()
    return torch.ops.batchserve.paged_prefill(q, k_cache, v_cache, key_slots, context, window or 0, scale)

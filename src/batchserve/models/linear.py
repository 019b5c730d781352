"""CPU GEMM backend: linear layers whose weights are packed once for oneDNN.

torch's default CPU linear sends float32 to MKL and repacks the weight on every
call. On the AMD EPYC machines this project runs on, MKL reaches about half of
oneDNN's rate at decode batch sizes (16-64 rows against 896x4864-class weights)
and under 90% of it on prompt chunks; oneDNN with the weight packed into its
blocked layout once, at load, runs the same products 1.5-2x faster (measured in
bench/RESULTS.md). The packed layout is opaque, so packing is the last step of
loading: the module swap below replaces `nn.Linear` with `PackedLinear`.

At one row (a batch-1 decode step) the product is a GEMV: every weight is read
once and used once, so its speed is the memory bandwidth it reaches. oneDNN's
packed GEMV reaches about two thirds of a plain streaming read here; the same
product written as a multiply-and-reduce over the plain row-major weight, which
inductor compiles into one vectorized kernel, reaches about 90% of it. A
compiled decode step therefore runs its one-row products that way where the
plain weight was kept (`row_major`, CompilationConfig.row_major_gemv).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def new_linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype, device) -> nn.Linear:
    """An uninitialised nn.Linear: load_weights overwrites it, and random init of a 7B model costs minutes."""
    return skip_init(nn.Linear, n_in, n_out, bias=bias, dtype=dtype, device=device)


def prepack_supported(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this torch build packs `dtype` weights for oneDNN on `device` and gets F.linear's result."""
    return (device.type == "cpu" and dtype in PACKABLE_DTYPES and torch.backends.mkldnn.is_available()
            and _agrees_with_linear(dtype))


@cache
def _agrees_with_linear(dtype: torch.dtype) -> bool:
    # Builds without the two ops (AttributeError) or without oneDNN's kernels for this CPU
    # (RuntimeError), or that compute in reduced precision: the default path is the right one.
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=g).to(dtype) for shape in ((5, 64), (48, 64), (48,)))
    try:
        got = PackedLinear(w, b)(x)
    except (AttributeError, RuntimeError):
        return False
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    return bool(torch.allclose(got.float(), F.linear(x, w, b).float(), rtol=tol, atol=tol))


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's packed layout (inference only, CPU only).

    row_major: also keep W as it is, for the one-row products of a compiled step (gemv).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, row_major: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # batch_size=None: a layout that serves every row count, from 1-row decodes to 2048-token chunks
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.weight = weight.detach() if row_major else None
        self.bias = None if bias is None else bias.detach()

    @property
    def row_major_gemv(self) -> bool:
        """Whether a compiled one-row product streams the plain weight (gemv), not the packed one."""
        return self.weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if compiled_one_row(x) and self.row_major_gemv:
            return gemv(x, self.weight, self.bias)
        if torch.compiler.is_compiling():  # inductor cannot lower the oneDNN op itself; it calls ours opaquely
            return packed_linear(x, self.packed_weight, self.bias, self.out_features)
        if x.shape[0] == 0:  # oneDNN rejects empty inputs
            return x.new_empty(0, self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"row_major={self.row_major_gemv}")


def compiled_one_row(x: torch.Tensor) -> bool:
    """Whether `x` is the input of a graph being compiled for one row (sizes 0 and 1 are never symbolic)."""
    return torch.compiler.is_compiling() and x.shape[0] == 1


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
         scales: torch.Tensor | None = None) -> torch.Tensor:
    """x (s * W)^T + b for few rows as a multiply-and-reduce in float32: compiled, one kernel streaming W once per
    row. `scales`: one per output channel, for integer W (models/quantization.Int8Linear)."""
    y = (x[:, None, :].float() * weight.float()).sum(-1)
    y = (y if scales is None else y * scales.float()).to(x.dtype)
    return y if bias is None else y + bias


@torch.library.custom_op("batchserve::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None,
                  out_features: int) -> torch.Tensor:
    """PackedLinear's product as an op torch.compile keeps whole (a compiled decode step, models/decode_step.py)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed_weight, bias, "none", [], "")


@packed_linear.register_fake
def _(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


def replace_linears(module: nn.Module, make: Callable[[str, nn.Linear], nn.Module], prefix: str = "") -> None:
    """Replace every nn.Linear under `module` by `make(its dotted path, linear)` (a packed or quantized form)."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Linear):
            setattr(module, name, make(path, child))
        else:
            replace_linears(child, make, f"{path}.")


def prepack_linears(module: nn.Module, row_major: bool = False) -> None:
    """Replace every nn.Linear under `module` by a PackedLinear of the same weights (keeping them if row_major)."""
    replace_linears(module, lambda _, linear: PackedLinear(linear.weight, linear.bias, row_major))

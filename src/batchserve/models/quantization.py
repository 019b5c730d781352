"""Weight-only quantization of the projection layers: int8 per channel (W8A16) and int4 per group (W4A16).

The products run in torch's packed low-bit kernels, which dequantize inside
the GEMM, so the weights stay int8 / int4 in memory (a quarter / an eighth of
float32): small-batch decode reads every weight once per step and is bound by
memory bandwidth. Activations enter as bfloat16: on CPU these kernels have a
vectorized path for bfloat16 only (their float32 path ran 10-50x slower than
float32 F.linear on these machines, measured at 1-128 rows against 1536x576).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import QuantizationConfig
from .linear import compiled_one_row, gemv, replace_linears

_ACTIVATION_DTYPE = torch.bfloat16
# int4 packing: the CPU kernel needs out_features % 16 == 0; the CUDA one % 8 and in_features % (16 * inner k tiles)
_CPU_OUT_MULTIPLE = 16
_CUDA_OUT_MULTIPLE = 8
_CUDA_INNER_K_TILES = (8, 4, 2)
_INT4_MIDPOINT = 8  # the kernels compute (q - 8) * scale + zero for q in 0..15


class Int8Linear(nn.Module):
    """y = x (s * Q)^T + b with Q int8 [out, in] and one scale s per output channel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_int8, scales = quantize_per_channel(weight.detach())
        self.scales = scales.to(_ACTIVATION_DTYPE)
        self.bias = None if bias is None else bias.detach()

    @property
    def row_major_gemv(self) -> bool:
        """Whether a compiled one-row product streams the int8 rows themselves (gemv; CPU: see models/linear.py)."""
        return self.weight_int8.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if compiled_one_row(x) and self.row_major_gemv:
            return gemv(x, self.weight_int8, self.bias, self.scales)
        y = torch.ops.aten._weight_int8pack_mm(x.to(_ACTIVATION_DTYPE), self.weight_int8, self.scales).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int4Linear(nn.Module):
    """y = x W^T + b with W[o, i] = scale[o, g] * Q[o, i] + low[o, g], Q in 0..15, g = i // group_size.

    The affine form holds GGUF's Q4_0 (low = -8 scale), Q4_1 (low = its min) and
    Q4_K blocks as well as min/max quantization at load. Scales and offsets are
    stored in bfloat16, the activation dtype the kernel takes them in.
    """

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.group_size = group_size
        device = qweight.device
        if not int4_fits(self.out_features, self.in_features, group_size, device):
            raise ValueError(f"a {self.out_features}x{self.in_features} weight does not fit the int4 kernel with "
                             f"group size {group_size} on {device.type}")
        q = qweight.to(torch.int32)
        if device.type == "cuda":
            inner_k_tiles = next(t for t in _CUDA_INNER_K_TILES if self.in_features % (16 * t) == 0)
            nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            self.packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, inner_k_tiles)
        else:
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        # [in / group, out, 2]: the kernel's (scale, zero) per group and output channel
        zeros = lows.float() + _INT4_MIDPOINT * scales.float()
        self.scales_and_zeros = torch.stack([scales.float().T, zeros.T], dim=-1).to(_ACTIVATION_DTYPE).contiguous()
        self.bias = None if bias is None else bias.detach()

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int) -> Int4Linear:
        return cls(*quantize_per_group(weight.detach(), group_size), group_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.to(_ACTIVATION_DTYPE)
        if self.packed.device.type == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(a, self.packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(a, self.packed, self.group_size, self.scales_and_zeros)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scales [out]): symmetric, each row's absmax maps to 127."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a finite scale
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def quantize_per_group(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q uint8 in 0..15 [out, in], scales, lows [out, in / group]): each group's min..max spans 0..15."""
    out_features, in_features = weight.shape
    w = weight.float().reshape(out_features, in_features // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-12)  # a constant group keeps a finite scale
    q = torch.round((w - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(out_features, in_features), scales, low


def int4_fits(out_features: int, in_features: int, group_size: int, device: torch.device) -> bool:
    """Whether the int4 kernel on `device` takes a weight of this shape in groups of `group_size`."""
    if in_features % group_size:
        return False
    if device.type == "cuda":
        return out_features % _CUDA_OUT_MULTIPLE == 0 and in_features % (16 * _CUDA_INNER_K_TILES[-1]) == 0
    return out_features % _CPU_OUT_MULTIPLE == 0


def quantize_linears(module: nn.Module, config: QuantizationConfig) -> None:
    """Replace every nn.Linear under `module` by its int8 or int4 form (config.method "int8" or "int4").

    int4: a layer whose shape the kernel cannot take in groups of
    config.group_size becomes int8 instead (see `int4_fits`).
    """
    replace_linears(module, lambda _, linear: quantized_linear(linear, config.method, config.group_size))


def quantized_linear(linear: nn.Linear, method: str, group_size: int) -> nn.Module:
    """`linear` as an Int4Linear (method "int4", where its shape fits) or an Int8Linear."""
    return quantized_weight(linear.weight, linear.bias, method, group_size)


def quantized_weight(weight: torch.Tensor, bias: torch.Tensor | None, method: str, group_size: int) -> nn.Module:
    """The product x W^T + b with W [out, in] quantized: int4 (method "int4", where its shape fits) or int8."""
    out_features, in_features = weight.shape
    if method == "int4" and int4_fits(out_features, in_features, group_size, weight.device):
        return Int4Linear.quantize(weight, bias, group_size)
    return Int8Linear(weight, bias)


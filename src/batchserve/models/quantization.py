"""Weight-only int8 quantization of the projection layers, done at load (W8A16).

Each output channel of a weight gets one scale (absmax / 127) and int8
values; the product runs in torch's `_weight_int8pack_mm`, which dequantizes
inside the GEMM, so the weights stay int8 in memory (a quarter of float32).
Activations enter it as bfloat16: on CPU this kernel has a vectorized path
for bfloat16 activations only, and its float32 path ran 10-50x slower than
float32 F.linear on these machines (measured, 1-128 rows against 1536x576).
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATION_DTYPE = torch.bfloat16


class Int8Linear(nn.Module):
    """y = x (s * Q)^T + b with Q int8 [out, in] and one scale s per output channel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_int8, scales = quantize_per_channel(weight.detach())
        self.scales = scales.to(_ACTIVATION_DTYPE)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(_ACTIVATION_DTYPE), self.weight_int8, self.scales).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scales [out]): symmetric, each row's absmax maps to 127."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a finite scale
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def quantize_linears(module: nn.Module) -> None:
    """Replace every nn.Linear under `module` by an Int8Linear of its weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child.weight, child.bias))
        else:
            quantize_linears(child)

"""LoRALinear: a base projection plus per-segment adapter deltas (the SGMV idea, one matmul pair per adapter).

The executor lays the step's rows out grouped by adapter, so each adapter's
rows are one contiguous slice (`LoRAStep.segments`, set by the manager before
the forward); every wrapped projection then adds, for each segment,
`x_seg A_slot^T B_slot^T` on top of the shared base GEMM. Rows of the
base model are in no segment and pay nothing. Slots are sized for
`max_lora_rank`; a smaller adapter's extra rows and columns are zeros.

Fused projections (q/k/v in `qkv_proj`, gate/up in `gate_up_proj`) stack the
A's of their parts (part j in rows [j R, (j+1) R)), so one shrink GEMM serves
all parts; the expand runs per part, part j's B on its own output columns (a
block-diagonal B would be one GEMM but cost `parts` x the expand FLOPs: 2x
slower on 512-row prompt chunks of a gate/up projection, measured on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..model_config import ModelConfig
from ..models.llama import CausalLM, fused_rows

# (parent module, attribute) of each projection LoRA wraps, in every decoder layer
TARGETS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"), ("mlp", "gate_up_proj"), ("mlp", "down_proj"))


@dataclass
class LoRAStep:
    """This step's (slot, rows) segments: the flat-batch rows that run under each resident adapter."""

    segments: list[tuple[int, slice]] = field(default_factory=list)


class LoRALinear(nn.Module):
    """y = base(x) + x A_s^T B_s^T for the rows of each adapter segment s."""

    def __init__(self, base: nn.Module, parts: tuple[tuple[str, int], ...], max_loras: int, max_rank: int,
                 step: LoRAStep, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.base = base
        self.parts = parts
        """(HF projection name, output rows) of each part, in row order."""
        self.step = step
        n_parts, n_in, n_out = len(parts), base.in_features, base.out_features
        offsets = [sum(n for _, n in parts[:j]) for j in range(n_parts)]
        # (output columns, A rows) of each part: its slice of y and of the shrink's result
        self.splits = [(slice(off, off + n), slice(j * max_rank, (j + 1) * max_rank))
                       for j, (off, (_, n)) in enumerate(zip(offsets, parts))]
        self.register_buffer("lora_a", torch.zeros(max_loras, n_parts * max_rank, n_in, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("lora_b", torch.zeros(max_loras, n_out, max_rank, dtype=dtype, device=device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, rows in self.step.segments:  # contiguous rows: each expand GEMM accumulates into y in place
            h, y_seg, b = x[rows] @ self.lora_a[slot].T, y[rows], self.lora_b[slot]
            for cols, ranks in self.splits:
                y_seg[:, cols].addmm_(h[:, ranks], b[cols].T)
        return y

    def set_slot(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write one adapter's (A, B) per part name into a slot; parts it does not target get zeros."""
        a, b = self.lora_a[slot], self.lora_b[slot]
        a.zero_()
        b.zero_()
        for (name, _), (cols, ranks) in zip(self.parts, self.splits):
            if name in weights:
                lora_a, lora_b = weights[name]
                r = lora_a.shape[0]
                a[ranks.start:ranks.start + r].copy_(lora_a)
                b[cols, :r].copy_(lora_b)


def wrap_model(model: CausalLM, config: ModelConfig, max_loras: int, max_rank: int,
               step: LoRAStep) -> list[list[LoRALinear]]:
    """Replace every decoder layer's projections by LoRALinears (after prepacking); returns them per layer."""
    fused = fused_rows(config)
    layers = []
    for layer in model.model.layers:
        wrapped = []
        for parent_name, name in TARGETS:
            parent = getattr(layer, parent_name)
            base = getattr(parent, name)
            parts = fused.get(name, ((name, base.out_features),))
            lin = LoRALinear(base, parts, max_loras, max_rank, step, model.dtype, model.device)
            setattr(parent, name, lin)
            wrapped.append(lin)
        layers.append(wrapped)
    return layers

"""Random weights that make a strong oracle: HF's init (std 0.02, unit norms) gives logits near 0 and nearly
uniform attention, where almost any bug still matches."""

from __future__ import annotations

import torch


def randomize(model: torch.nn.Module, only: str | None = None) -> None:
    """Redraw the parameters (those whose name contains `only`, if given): norms near 1, matrices at 1/sqrt(fan-in)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only is not None and only not in name:
                continue
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
            else:
                p.normal_(0, 0.2)

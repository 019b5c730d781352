"""Rotary position embedding (RoPE) with the Llama-family scalings.

cos/sin are computed once for every position up to max_model_len, in float32
whatever the model dtype (bf16 angles lose whole turns at long positions), and
gathered by each step's positions. Rotation uses the rotate-half layout of HF
Llama checkpoints: dimension i pairs with i + head_dim/2.
"""

from __future__ import annotations

import math

import torch

from ..model_config import ModelConfig


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the attention factor that scales cos/sin (yarn's mscale)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    kind = scaling["rope_type"] if scaling else "default"
    if kind in ("default", "dynamic"):  # dynamic changes the base per position, see _dynamic_angles
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn(head_dim, theta, scaling)
    raise ValueError(f"unknown rope type {kind!r}")


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1: slow the low frequencies by `factor`, keep the high ones, blend in between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    blend = ((old_len / wavelen - low) / (high - low)).clamp(0, 1)  # 0: fully scaled, 1: untouched
    scaled = inv_freq / factor
    out = (1 - blend) * scaled + blend * inv_freq
    out = torch.where(wavelen > old_len / low, scaled, out)
    return torch.where(wavelen < old_len / high, inv_freq, out)


def _yarn(head_dim: int, theta: float, s: dict) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, extrapolate high ones, ramp between; scale attention by mscale."""
    factor, old_len = s["factor"], s["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = s.get("attention_factor")
    if attn is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def dim_for_rotations(rotations: float) -> float:
        # the rotary dim whose wavelength fits `rotations` times into the trained length
        return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for_rotations(s.get("beta_fast") or 32), dim_for_rotations(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    base_freq = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    extrapolated, interpolated = 1.0 / base_freq, 1.0 / (factor * base_freq)
    return interpolated * ramp + extrapolated * (1 - ramp), float(attn)


def _dynamic_angles(head_dim: int, theta: float, factor: float, trained_len: int, max_len: int) -> torch.Tensor:
    """Angles [max_len, head_dim/2] for dynamic NTK scaling.

    HF recomputes the base for the whole batch from its longest sequence, which
    a KV cache cannot follow (cached keys keep their old rotation). Here
    position p uses the base HF would use for a sequence of length p + 1: the
    same as HF decoding token by token with its cache, and plain RoPE below
    the trained length. A prompt longer than that, prefilled at once, differs
    from HF's one-shot forward (which rotates every token with the final base).
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    positions = torch.arange(max_len, dtype=torch.float32)
    seq_lens = torch.clamp(positions + 1, min=trained_len)
    bases = theta * ((factor * seq_lens / trained_len) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / bases[:, None] ** exponents[None, :]
    return positions[:, None] * inv_freq


RopeTables = tuple[torch.Tensor, torch.Tensor]
"""A step's cos and sin rows [T, 1, head_dim], in rotation layout: what `apply_rope` takes."""


class RotaryEmbedding(torch.nn.Module):
    """RoPE's cos/sin tables; `forward` gathers a step's rows once, and every layer applies them."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None):
        super().__init__()
        dim, theta, scaling = config.head_dim, config.rope_theta, config.rope_scaling
        if scaling and scaling["rope_type"] == "dynamic":
            trained = config.original_max_position_embeddings or config.max_model_len
            angles, attn = _dynamic_angles(dim, theta, scaling["factor"], trained, config.max_model_len), 1.0
        else:
            inv_freq, attn = rope_frequencies(dim, theta, scaling)
            angles = torch.arange(config.max_model_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
        # Plain attributes, not buffers: model.to(bfloat16) must not round them. Rotate-half as one
        # multiply-add: x * [cos, cos] + roll(x, half) * [-sin, sin] (the sign exact, so HF's numbers).
        cos, sin = angles.cos() * attn, angles.sin() * attn
        self.cos = torch.cat((cos, cos), dim=-1).to(device)
        self.sin = torch.cat((-sin, sin), dim=-1).to(device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeTables:
        """cos/sin rows of these positions [T, 1, head_dim], cast to the activation dtype."""
        if self.cos.device != positions.device:
            self.cos, self.sin = self.cos.to(positions.device), self.sin.to(positions.device)
        cos = self.cos.index_select(0, positions)[:, None, :].to(dtype)
        sin = self.sin.index_select(0, positions)[:, None, :].to(dtype)
        return cos, sin


def apply_rope(x: torch.Tensor, tables: RopeTables) -> torch.Tensor:
    """x [T, heads, head_dim] rotated by each token's position (rotate-half: i pairs with i + head_dim/2)."""
    cos, sin = tables
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin

"""quantization="gguf": a GGUF file's quantized projection weights run quantized instead of dequantized.

The 4-bit block types are affine per block of 32 weights, w = scale * q + low
with q in 0..15 (Q4_0: low = -8 scale; Q4_1: low = the block's min; Q4_K:
scale = d * sub-scale, low = -dmin * sub-min), which is what the int4 group
kernel computes with group size 32: those layers run Int4Linear on the file's
own q values. Scales and offsets pass through bfloat16, the kernel's dtype
(relative error <= 2^-9 each). Other quantized types (Q8_0, Q5_*, Q6_K, Q2_K,
Q3_K) have no kernel here and are requantized from their dequantized values to
int8 per output channel (error <= half a step of the row's absmax / 127).
Float tensors stay in the model's dtype, as does the embedding lookup and, unless
QuantizationConfig.quantize_lm_head, the LM head.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..gguf_file import GGUFFile
from ..model_config import ModelConfig
from .gguf_weights import hf_name, qk_permuted_heads, unpermute_qk
from .linear import replace_linears
from .llama import fused_rows
from .quantization import Int4Linear, Int8Linear, int4_fits

GGUF_BLOCK = 32
INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
_Q4_K_SUPER_BLOCK = 256
_Q4_K_SCALE_BYTES = 12


def int4_blocks(data: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [rows, cols], scales, lows float32 [rows, cols / 32]) of a Q4_0/Q4_1/Q4_K tensor's raw bytes."""
    rows = data.shape[0]
    if kind == "Q4_K":
        return _q4_k_blocks(data.reshape(rows, -1))
    head = 2 if kind == "Q4_0" else 4  # fp16 d, then Q4_1's fp16 min
    blocks = data.reshape(rows, -1, head + GGUF_BLOCK // 2)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    low = -8 * d if kind == "Q4_0" else blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return _nibbles(blocks[..., head:]).reshape(rows, -1), d, low


def _q4_k_blocks(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K: super-blocks of 256 = 8 sub-blocks of 32, each with a 6-bit scale and min under fp16 d and dmin."""
    import gguf

    rows = data.shape[0]
    blocks = data.reshape(rows, -1, 4 + _Q4_K_SCALE_BYTES + _Q4_K_SUPER_BLOCK // 2)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    packed_scales = blocks[..., 4:4 + _Q4_K_SCALE_BYTES].reshape(-1, _Q4_K_SCALE_BYTES)
    sub_scale, sub_min = (a.reshape(rows, -1, 8).astype(np.float32) for a in gguf.quants.Q4_K.get_scale_min(packed_scales))
    # 32-byte chunks: sub-block 2c is chunk c's low nibbles, 2c + 1 its high nibbles
    chunks = blocks[..., 4 + _Q4_K_SCALE_BYTES:].reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]
    q = (chunks & 0x0F).reshape(rows, -1)
    return q, (d * sub_scale).reshape(rows, -1), (-dmin * sub_min).reshape(rows, -1)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """ggml's 4-bit block layout: byte j holds weight j (low nibble) and weight j + 16 (high nibble)."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def gguf_quantized_linears(module: nn.Module, file: GGUFFile, config: ModelConfig) -> None:
    """Replace the decoder's linear layers (weights already loaded dequantized) by quantized forms of the file's.

    A fused layer (qkv, gate_up) runs int4 only when all its parts are 4-bit
    blocks and its shape fits the kernel; else int8 if any part is quantized.
    """
    tensors = {hf_name(t.name): t for t in file.tensors}
    fused = fused_rows(config)

    def make(path: str, linear: nn.Linear) -> nn.Module:
        parent, leaf = path.rsplit(".", 1)
        parts = [tensors[f"{parent}.{hf}.weight"] for hf, _ in fused[leaf]] if leaf in fused else [
            tensors[f"{path}.weight"]]
        kinds = {t.tensor_type.name for t in parts}
        if kinds <= set(FLOAT_TYPES):
            return linear
        if kinds <= set(INT4_TYPES) and int4_fits(linear.out_features, linear.in_features, GGUF_BLOCK,
                                                   linear.weight.device):
            q, scales, lows = (np.concatenate(a) for a in zip(*(_blocks(file, t, config) for t in parts)))
            device = linear.weight.device
            return Int4Linear(*(torch.from_numpy(a).to(device) for a in (q, scales, lows)), GGUF_BLOCK, linear.bias)
        return Int8Linear(linear.weight, linear.bias)

    replace_linears(module, make, prefix="model.")


def _blocks(file: GGUFFile, tensor, config: ModelConfig) -> tuple[np.ndarray, ...]:
    """A tensor's int4 blocks in HF row order."""
    blocks = int4_blocks(np.asarray(tensor.data), tensor.tensor_type.name)
    heads = qk_permuted_heads(file, tensor.name, config.num_attention_heads, config.num_kv_heads)
    return blocks if heads is None else tuple(unpermute_qk(a, heads) for a in blocks)

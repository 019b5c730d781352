"""A GGUF file's tensors as HF-named torch tensors, dequantized, in the layout HF checkpoints use.

Two facts of llama.cpp's converter are undone here: tensor names
(`blk.0.attn_q.weight` is `model.layers.0.self_attn.q_proj.weight`), and, for
the "llama" architecture, a row permutation of the q/k projections that turns
HF's half-split RoPE layout into llama.cpp's interleaved one.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch

from ..gguf_file import GGUFError, GGUFFile

# The tensor types gguf.quants dequantizes in numpy (checked against its reference values).
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# Architectures whose converter permutes q/k rows (qwen2/qwen3 use NEOX RoPE and keep HF's order).
_PERMUTED_QK = ("llama",)

_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # MoE: the router, experts stacked [E, ...] (split per expert by models/moe.py), Qwen2-MoE's shared expert
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str:
    """The HF checkpoint name of a llama.cpp tensor name; unknown names pass through (load_weights names them)."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    m = _LAYER_NAME.fullmatch(gguf_name)
    if m is None or m.group(2) not in _LAYER:
        return gguf_name
    return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"


def check_tensor_types(file: GGUFFile) -> None:
    """Refuse, before reading any weight, a file holding tensor types that cannot be dequantized here."""
    unsupported: dict[str, list[str]] = {}
    for t in file.tensors:
        if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
            unsupported.setdefault(t.tensor_type.name, []).append(t.name)
    if unsupported:
        found = "; ".join(f"{kind} ({len(names)} tensors, e.g. {names[0]})" for kind, names in unsupported.items())
        raise GGUFError(f"{file.path}: unsupported tensor types: {found}. Supported: "
                        f"{', '.join(SUPPORTED_TENSOR_TYPES)}; requantize the model to one of them "
                        f"(e.g. llama.cpp's llama-quantize ... Q4_K_M)")


def gguf_tensors(file: GGUFFile, num_heads: int, num_kv_heads: int,
                 dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor in `dtype`) for every tensor of the file, one at a time."""
    import gguf

    check_tensor_types(file)
    for t in file.tensors:
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:  # a damaged block the header did not reveal
            raise GGUFError(f"{file.path}: tensor {t.name} ({t.tensor_type.name}) cannot be read: {e}") from None
        name = hf_name(t.name)
        heads = qk_permuted_heads(file, t.name, num_heads, num_kv_heads)
        if heads is not None:
            array = unpermute_qk(array, heads)
        if t.name.endswith("ffn_gate_inp_shexp.weight"):
            array = array.reshape(1, -1)  # llama.cpp keeps the shared expert's one-row gate as a vector
        # unquantized tensors are read-only views of the memory-mapped file: copy those only
        yield name, torch.from_numpy(np.require(array, requirements=("C", "W"))).to(dtype)


def qk_permuted_heads(file: GGUFFile, gguf_name: str, num_heads: int, num_kv_heads: int) -> int | None:
    """The head count of a q/k tensor whose rows llama.cpp's converter permuted; None for every other tensor."""
    if file.architecture not in _PERMUTED_QK or not gguf_name.endswith(
            ("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias")):
        return None
    return num_heads if ".attn_q." in gguf_name else num_kv_heads


def unpermute_qk(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head, it interleaves the two RoPE halves (x0, x_d/2, x1, ...)."""
    half = rows.shape[0] // num_heads // 2
    return rows.reshape(num_heads, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)

"""Weight-only quantization as the cost model sees it: bytes a quantized weight streams per read.

The engine's int8 / int4 layers (models/quantization.py) keep their weights
packed and dequantize them inside the GEMM, so a step reads the packed bytes
and computes in the activation dtype. Scales and offsets are bfloat16 (2 bytes).
"""

from __future__ import annotations

WEIGHT_ONLY_METHODS = ("int8", "int4")
"""--quantization values the simulator models (gguf runs a file's own mix of types: estimate it as int4)."""
LM_HEAD_METHOD = "int8"
"""A quantized LM head (QuantizationConfig.quantize_lm_head) runs int8 under every method."""
_SCALE_BYTES = 2


def quantized_weight_bytes(in_features: float, out_features: float, method: str, group_size: int) -> float:
    """Bytes of a [out x in] weight: int8 values and one scale per output channel, or int4 values (two per byte)
    with a scale and an offset per group of `group_size` inputs of every output channel."""
    if method == "int8":
        return in_features * out_features + _SCALE_BYTES * out_features
    if method == "int4":
        return in_features * out_features / 2 + 2 * _SCALE_BYTES * out_features * in_features / group_size
    raise ValueError(f"weight-only quantization {method!r} is not modelled; use one of {', '.join(WEIGHT_ONLY_METHODS)}")

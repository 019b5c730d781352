"""A deployment of one replica: model, hardware, TP x PP plan, dtypes, and what fits in memory."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..model_config import ModelConfig, kv_bytes_per_block, kv_bytes_per_token
from .hardware import Hardware
from .quantization import LM_HEAD_METHOD, WEIGHT_ONLY_METHODS, quantized_weight_bytes

GiB = 1024**3

# Bytes per weight element. int4 carries one 16-bit scale per 128-weight group (as GPTQ/AWQ do).
# fp32 is for CPU engines (and calibration on them); accelerators serve 16-bit or narrower.
WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2 / 128, "fp32": 4.0}
# The dtype the GEMMs run in: W8A8 for fp8/int8, weight-only (dequantise to bf16) for int4.
COMPUTE_DTYPE = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "int4": "bf16", "fp32": "fp32"}
# "auto" is the activation width: 16-bit, or 32-bit for fp32 weights.
KV_BYTES = {"auto": 2.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp32": 4.0}
ACTIVATION_BYTES = 2.0  # activations stay in 16-bit (32-bit with fp32 weights)


class DoesNotFitError(ValueError):
    """The model (or its KV cache for one request) does not fit the deployment's memory."""


@dataclass(frozen=True)
class Deployment:
    model: ModelConfig
    hardware: Hardware
    tp: int = 1
    pp: int = 1
    weight_dtype: str = "bf16"
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    """Fraction of device memory the engine may use (weights, activations, KV), as in vLLM."""
    max_lora_rank: int = 0
    """Rank of the LoRA adapter slots (LoRA's `max_lora_rank`); 0: the replica serves no adapters."""
    quantization: str | None = None
    """Weight-only quantization as the engine runs it (int8 per channel, int4 per group, LM head int8):
    weights stream packed, GEMMs compute in `weight_dtype`; None: weights in `weight_dtype`."""
    quantization_group_size: int = 32
    """int4: input weights per scale and offset."""
    quantize_lm_head: bool = False
    """With `quantization`: the LM head runs int8 too (a copy of the table when tied); else it stays in
    `weight_dtype` (QuantizationConfig.quantize_lm_head)."""

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ValueError(f"tp and pp must be >= 1, got tp={self.tp} pp={self.pp}")
        if self.weight_dtype not in WEIGHT_BYTES:
            raise ValueError(f"unknown weight dtype {self.weight_dtype!r}; choose one of {', '.join(WEIGHT_BYTES)}")
        if self.kv_cache_dtype not in KV_BYTES:
            raise ValueError(f"unknown kv cache dtype {self.kv_cache_dtype!r}; choose one of {', '.join(KV_BYTES)}")
        if not self.hardware.supports(self.compute_dtype):
            supported = [d for d in WEIGHT_BYTES if self.hardware.supports(COMPUTE_DTYPE[d])]
            raise ValueError(
                f"{self.hardware.name} has no {self.compute_dtype} tensor cores for weight dtype "
                f"{self.weight_dtype}; choose one of {', '.join(supported)}"
            )
        if self.pp > self.model.num_layers:
            raise ValueError(f"pp={self.pp} exceeds the model's {self.model.num_layers} layers")
        if self.model.num_attention_heads % self.tp:
            raise ValueError(f"tp={self.tp} must divide the model's {self.model.num_attention_heads} attention heads")
        if self.quantization is not None and self.quantization not in WEIGHT_ONLY_METHODS:
            raise ValueError(f"quantization {self.quantization!r} is not modelled; use one of "
                             f"{', '.join(WEIGHT_ONLY_METHODS)} (a GGUF file's 4-bit blocks: int4)")
        if self.quantization is not None and self.weight_dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"quantization {self.quantization} quantizes float weights; weight dtype "
                             f"{self.weight_dtype} is quantized already")
        if self.max_lora_rank < 0:
            raise ValueError(f"max_lora_rank must be >= 0, got {self.max_lora_rank}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def compute_dtype(self) -> str:
        return COMPUTE_DTYPE[self.weight_dtype]

    @property
    def weight_bytes_per_param(self) -> float:
        return WEIGHT_BYTES[self.weight_dtype]

    @property
    def activation_bytes(self) -> float:
        return 4.0 if self.weight_dtype == "fp32" else ACTIVATION_BYTES

    @property
    def kv_bytes_per_element(self) -> float:
        return self.activation_bytes if self.kv_cache_dtype == "auto" else KV_BYTES[self.kv_cache_dtype]

    @property
    def layers_per_stage(self) -> int:
        return -(-self.model.num_layers // self.pp)

    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV bytes of one token on one GPU: its TP share of the KV heads over its PP stage's layers."""
        return kv_bytes_per_token(self.model, self.kv_bytes_per_element, self.tp, self.layers_per_stage)

    def weight_bytes_per_gpu(self) -> float:
        """Weights of the largest stage, sharded over TP (embeddings and LM head on the end stages)."""
        m = self.model
        embed = m.vocab_size * m.hidden_size
        lm_head = 0 if m.tie_word_embeddings else embed
        per_layer = (m.num_params() - embed - lm_head) / m.num_layers
        # quantized layers stream packed; the embedding table stays in weight_dtype
        layer_bytes = (self.quantized_bytes_per_param(self.quantization) if self.quantization is not None
                       else self.weight_bytes_per_param)
        if self.lm_head_quantization:  # its own int8 copy, tied or not
            head = m.vocab_size * m.hidden_size * self.quantized_bytes_per_param(self.lm_head_quantization)
        else:
            head = lm_head * self.weight_bytes_per_param
        embed *= self.weight_bytes_per_param
        layers = per_layer * self.layers_per_stage * layer_bytes
        return (layers + (embed + head if self.pp == 1 else max(embed, head))) / self.tp

    @property
    def lm_head_quantization(self) -> str | None:
        """How the LM head's weights are stored: int8 when quantized with the rest, None: in `weight_dtype`."""
        return LM_HEAD_METHOD if self.quantization is not None and self.quantize_lm_head else None

    def quantized_bytes_per_param(self, method: str) -> float:
        """Bytes per weight under `method` for this model's hidden width (scales included)."""
        h = self.model.hidden_size
        return quantized_weight_bytes(h, 1, method, self.quantization_group_size) / h

    def activation_bytes_per_gpu(self, max_num_batched_tokens: int) -> float:
        """Peak activation workspace for one step, plus a fixed 1 GiB for the runtime (CUDA context, graphs)."""
        m = self.model
        width = 4 * m.hidden_size + 2 * m.intermediate_size * max(1, m.num_experts_per_tok) / self.tp
        logits = min(max_num_batched_tokens, 256) * m.vocab_size * 4 / self.tp
        return max_num_batched_tokens * width * self.activation_bytes + logits + GiB

    def num_kv_blocks(self, block_size: int, max_num_batched_tokens: int, draft: ModelConfig | None = None) -> int:
        """KV blocks that fit beside weights and activations; DoesNotFitError when none do.

        `draft`: a speculative draft model beside the target, as the engine loads it: its weights whole (not
        quantized) on every GPU, and a draft block for each target block (its K/V at the same dtype and tp).
        """
        usable = self.hardware.memory_bytes * self.gpu_memory_utilization
        weights = self.weight_bytes_per_gpu()
        if draft is not None:
            weights += replace(self, model=draft, pp=1, max_lora_rank=0, quantization=None).weight_bytes_per_gpu()
        activations = self.activation_bytes_per_gpu(max_num_batched_tokens)
        free = usable - weights - activations
        per_block = kv_bytes_per_block(self.model, block_size, self.kv_bytes_per_element, self.tp,
                                       self.layers_per_stage)
        if draft is not None:
            per_block += kv_bytes_per_block(draft, block_size, self.kv_bytes_per_element, self.tp)
        if free < per_block:
            missing = (per_block - free) / GiB
            raise DoesNotFitError(
                f"{self.model.name} ({self.weight_dtype}) does not fit on {self.num_gpus}x {self.hardware.name} "
                f"(tp={self.tp}, pp={self.pp}): each GPU needs {weights / GiB:.1f} GiB of weights + "
                f"{activations / GiB:.1f} GiB of activations + KV cache, but has {usable / GiB:.1f} GiB usable "
                f"({self.gpu_memory_utilization:.0%} of {self.hardware.memory_bytes / GiB:.1f} GiB); "
                f"{missing:.1f} GiB missing per GPU. Try a larger --tp or --pp, a smaller --weight-dtype "
                "(fp8, int8, int4), or hardware with more memory."
            )
        return int(free // per_block)

    def to_dict(self) -> dict:
        return {
            "model": self.model.name,
            "hardware": self.hardware.name,
            "tp": self.tp,
            "pp": self.pp,
            "num_gpus": self.num_gpus,
            "weight_dtype": self.weight_dtype,
            "quantization": self.quantization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
        }

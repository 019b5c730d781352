"""What a job runs on, from one set of values: the real engine's arguments and its simulated twin.

`run` turns its flags into one `RunSetup`; the engine that runs the job and
the simulator that estimates it both read it, so the twin has the same dtype,
scheduler, KV cache size and replicas as the run and cannot drift from it.
Torch-free: the default device is looked up only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attention_layout import AttentionConfig, default_attention_backend
from ..config import (CacheConfig, CompilationConfig, QuantizationConfig, compiles_decode, expert_batching,
                      scheduler_config)
from ..engine.memory import num_kv_blocks
from ..lora import LoRAConfig
from ..model_config import ModelConfig, kv_bytes_per_block, serving_dtype
from ..sim.hardware import normalize_dtype
from ..sim.models import get_model
from ..sim.simulate import ClusterConfig, SimSetup, resolve
from ..sim.speculation import SpecAcceptance
from ..spec_decode import SpeculativeConfig

# Bytes of a KV element per engine dtype (the engine's cache has the model's dtype).
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def default_device() -> str:
    """The engine's default: cuda when torch sees one, else cpu (cpu also when torch is absent)."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_shape(model: str) -> ModelConfig:
    """The model's shape without loading weights: the built-in tiny, or a HF directory's config.json."""
    if model == "tiny":
        from ..models.tiny import tiny_config

        return tiny_config()
    return get_model(model)


@dataclass(frozen=True)
class RunSetup:
    """The engine-side values of a job: each is one `run` flag, read by both the engine and its twin."""

    model: str = "tiny"
    dtype: str = "auto"
    device: str | None = None
    max_model_len: int | None = None
    """--max-model-len: the cap on a sequence's length (None: the model's context length)."""
    kv_cache_memory: str | None = None
    quantization: str | None = None
    quantization_group_size: int = QuantizationConfig.group_size
    quantize_lm_head: bool = QuantizationConfig.quantize_lm_head
    deterministic: bool = False
    weight_prepack: bool = True
    enforce_eager: bool = True
    compilation_config: str | None = None
    """--compilation-config as given (a JSON object); None: the default ladder."""
    attention_backend: str | None = None
    """--attention-backend; None: the device's default (`attention_layout.default_attention_backend`)."""
    async_scheduling: bool = False
    speculative_config: str | None = None
    """--speculative-config as given (a JSON object); None: off."""
    target_tokens_per_expert: int = 0
    """MoE: decode batches sized for this many rows per expert (`config.expert_batching`); 0: off."""
    scheduler: str = "sarathi"
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    block_size: int = 16
    replicas: int = 1
    lora: tuple[tuple[str, Any], ...] = ()
    """LLMEngine's LoRA arguments (enable_lora, max_loras, ...) as (name, value) pairs."""

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments of `LLMEngine` for one replica."""
        return {"dtype": self.dtype, "device": self.device, "max_model_len": self.max_model_len,
                "kv_cache_memory": self.kv_cache_memory,
                "quantization": self.quantization, "quantization_group_size": self.quantization_group_size,
                "quantize_lm_head": self.quantize_lm_head, "deterministic": self.deterministic,
                "weight_prepack": self.weight_prepack,
                "enforce_eager": self.enforce_eager, "compilation_config": self.compilation_config,
                "attention_backend": self.attention(), "async_scheduling": self.async_scheduling,
                "speculative_config": self.speculative_config,
                "target_tokens_per_expert": self.target_tokens_per_expert, "scheduler": self.scheduler,
                "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "block_size": self.block_size, **dict(self.lora)}

    def attention(self) -> str:
        """The attention backend the engine will run, the twin's too."""
        return self.attention_backend or default_attention_backend((self.device or default_device()).split(":")[0],
                                                                   self.deterministic)

    def shape(self) -> ModelConfig:
        """The model's shape as the engine will serve it (with --max-model-len), without loading weights."""
        return model_shape(self.model).with_max_model_len(self.max_model_len)

    def weight_dtype(self, shape: ModelConfig | None = None) -> str:
        """The cost model's dtype name of the weights the engine would load ("auto": the checkpoint's, as the
        loader resolves it on this device); with --quantization, the dtype its GEMMs and KV cache keep (the
        packed weights are the deployment's `quantization`)."""
        shape = shape or self.shape()
        auto = serving_dtype(shape.dtype, self.device or default_device())
        name = normalize_dtype(auto if self.dtype == "auto" else self.dtype)
        if name not in _DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} is not one the engine runs; use auto, float32, bfloat16 or float16")
        return name

    def num_kv_blocks(self, shape: ModelConfig) -> int | None:
        """The engine's KV block count where it does not depend on a GPU's free memory, else None
        (the simulator then sizes the cache from the hardware's memory, as the engine would on it)."""
        device = self.device or default_device()
        if self.kv_cache_memory is None and device != "cpu":
            return None
        per_block = int(kv_bytes_per_block(shape, self.block_size, _DTYPE_BYTES[self.weight_dtype(shape)]))
        # the engine's rule with no GPU memory to share (its gpu_memory_utilization then plays no part)
        return num_kv_blocks(self.kv_cache_memory, gpu_memory_utilization=1.0, bytes_per_block=per_block,
                             gpu_memory=None)

    def sim_setup(self, hardware: str, spec_acceptance: SpecAcceptance = SpecAcceptance()) -> SimSetup:
        """The simulated twin on `hardware` (with its own cost-model factors): same model shape, dtype, scheduler,
        KV blocks, replicas, LoRA slots and speculative decoding (whose drafts `spec_acceptance` accepts)."""
        shape = self.shape()
        speculative = SpeculativeConfig.of(self.speculative_config)
        draft = model_shape(speculative.model) if speculative is not None and speculative.model else None
        cluster = ClusterConfig(model=self.model, hardware=hardware, replicas=self.replicas,
                                weight_dtype=self.weight_dtype(shape), quantization=self.quantization,
                                quantization_group_size=self.quantization_group_size,
                                quantize_lm_head=self.quantize_lm_head)
        seqs, budget = expert_batching(self.max_num_seqs, self.max_num_batched_tokens, shape.num_experts,
                                       shape.num_experts_per_tok, self.target_tokens_per_expert)
        sched = scheduler_config(self.scheduler, max_num_batched_tokens=budget, max_num_seqs=seqs)
        cache = CacheConfig(block_size=self.block_size, num_blocks=self.num_kv_blocks(shape))
        lora = LoRAConfig(**dict(self.lora))
        backend = self.attention()
        rows = 0  # the steps the engine runs compiled: its own rule (LLMEngine)
        if compiles_decode(self.enforce_eager, lora.enable_lora):
            rows = CompilationConfig.of(self.compilation_config).decode_rows(backend, seqs)
        return resolve(cluster, sched, cache, model=shape, lora=lora,
                       attention=AttentionConfig(backend=backend, compiled_decode_rows=rows),
                       speculative=speculative,
                       spec_acceptance=spec_acceptance, draft_model=draft)

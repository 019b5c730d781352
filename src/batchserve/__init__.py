"""batchserve: batched LLM inference with one scheduler, a real engine and a simulator."""

from typing import Any

from .openmp import set_openmp_defaults

set_openmp_defaults()  # before anything loads torch's OpenMP runtime

from .config import CacheConfig, SchedulerConfig, scheduler_config
from .lora import LoRARequest
from .request import Request, RequestStatus, SamplingParams, StructuredOutputsParams

__version__ = "0.1.0"
__all__ = ["LLM", "LLMEngine", "CacheConfig", "LoRARequest", "Request", "RequestStatus", "SamplingParams",
           "SchedulerConfig", "StructuredOutputsParams", "scheduler_config"]


def __getattr__(name: str) -> Any:
    # LLM and LLMEngine need torch; importing them lazily keeps `import batchserve` (core, simulator) torch-free.
    if name == "LLM":
        from .entrypoints.llm import LLM

        return LLM
    if name == "LLMEngine":
        from .engine.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module 'batchserve' has no attribute {name!r}")

"""batchserve: batched LLM inference with one scheduler, a real engine and a simulator."""

from typing import Any

from .config import CacheConfig, SchedulerConfig, scheduler_config
from .request import Request, RequestStatus, SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "CacheConfig", "Request", "RequestStatus", "SamplingParams", "SchedulerConfig", "scheduler_config"]


def __getattr__(name: str) -> Any:
    # LLM needs torch; importing it lazily keeps `import batchserve` (core, simulator) torch-free.
    if name == "LLM":
        from .entrypoints.llm import LLM

        return LLM
    raise AttributeError(f"module 'batchserve' has no attribute {name!r}")

"""batchserve: batched LLM inference with one scheduler, a real engine and a simulator."""

from .config import CacheConfig, SchedulerConfig, scheduler_config
from .request import Request, RequestStatus, SamplingParams

__version__ = "0.1.0"
__all__ = ["CacheConfig", "Request", "RequestStatus", "SamplingParams", "SchedulerConfig", "scheduler_config"]

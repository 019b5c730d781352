"""The scheduler core: block pool, KV cache manager, policies, scheduler. Pure Python, no torch."""

from .block_pool import BlockPool
from .kv_cache_manager import KVCacheManager
from .batch import ScheduledBatch, StepResult
from .scheduler import Scheduler

__all__ = ["BlockPool", "KVCacheManager", "ScheduledBatch", "Scheduler", "StepResult"]

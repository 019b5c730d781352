"""The engine: the token-level step loop (`Engine`) and the request-level `LLMEngine` around it.

`Engine`, the input and output processors, the sibling gate and the stats
are torch-free, so the simulator imports this package without torch;
`LLMEngine` loads a model and is imported lazily.
"""

from typing import Any

from .core import AsyncEngine, Engine, StepOutput
from .input_processor import InputProcessor, ProcessedPrompt, PromptType, generation_defaults, read_generation_config
from .memory import num_kv_blocks, parse_memory
from .output_processor import OutputProcessor
from .parallel_sampling import SiblingGate
from .stats import EngineStats, StatsCollector

__all__ = [
    "AsyncEngine", "Engine", "EngineStats", "InputProcessor", "LLMEngine", "OutputProcessor", "ProcessedPrompt",
    "PromptType", "SiblingGate", "StatsCollector", "StepOutput", "generation_defaults", "num_kv_blocks",
    "parse_memory", "read_generation_config",
]


def __getattr__(name: str) -> Any:
    # LLMEngine needs torch; importing it lazily keeps `batchserve.engine` (core, simulator) torch-free.
    if name == "LLMEngine":
        from .llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module 'batchserve.engine' has no attribute {name!r}")

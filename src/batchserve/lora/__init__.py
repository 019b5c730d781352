"""Multi-LoRA serving: many fine-tunes of one base model in one batch.

`LoRARequest`, `LoRAConfig` and the scheduler's `LoRAAdmission` are
torch-free; the adapter loader, the wrapped projections and the manager
(`lora.adapter`, `lora.layers`, `lora.manager`) need torch and are imported
from their modules.
"""

from .admission import LoRAAdmission
from .config import LoRAConfig
from .request import LoRARequest, parse_lora_modules

__all__ = ["LoRAAdmission", "LoRAConfig", "LoRARequest", "parse_lora_modules"]

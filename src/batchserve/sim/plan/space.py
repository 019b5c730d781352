"""The search space of replica configurations, and pruning by memory before any simulation."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from ...config import SCHEDULER_PRESETS, CacheConfig, scheduler_config
from ...lora import LoRAConfig
from ...spec_decode import SpeculativeConfig
from ..cost_model import Efficiency
from ..deployment import DoesNotFitError
from ..hardware import get_hardware
from ..models import get_model
from ..router import ROUTERS, RouterConfig
from ..simulate import ClusterConfig, SimSetup, resolve
from ..speculation import SpecAcceptance

WEIGHT_DTYPES = ("bf16", "fp8", "int8", "int4")


@dataclass(frozen=True, order=True)
class ReplicaConfig:
    """One replica's shape and knobs; a candidate is this times a replica count and a router."""

    hardware: str
    tp: int
    pp: int
    weight_dtype: str
    preset: str
    max_num_batched_tokens: int
    max_num_seqs: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def label(self) -> str:
        return (
            f"{self.hardware} tp{self.tp} pp{self.pp} {self.weight_dtype} {self.preset} "
            f"chunk={self.max_num_batched_tokens} seqs={self.max_num_seqs}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """Every axis the planner searches; the product is filtered by `enumerate_space`."""

    model: str
    hardware: tuple[str, ...]
    max_gpus: int
    tp: tuple[int, ...] = (1, 2, 4, 8)
    pp: tuple[int, ...] = (1, 2)
    weight_dtypes: tuple[str, ...] = ("bf16", "fp8")
    presets: tuple[str, ...] = ("sarathi",)
    max_num_batched_tokens: tuple[int, ...] = (512, 2048, 8192)
    max_num_seqs: tuple[int, ...] = (256,)
    routers: tuple[str, ...] = ("round-robin", "least-loaded")

    def __post_init__(self) -> None:
        if self.max_gpus < 1:
            raise ValueError(f"--max-gpus must be >= 1, got {self.max_gpus}")
        for name in ("hardware", "tp", "pp", "weight_dtypes", "presets", "max_num_batched_tokens", "max_num_seqs",
                     "routers"):
            if not getattr(self, name):
                raise ValueError(f"the search space needs at least one {name.replace('_', ' ')} value")
        for h in self.hardware:
            get_hardware(h)  # unknown names fail here, listing the catalog
        _check_choices("weight dtype", self.weight_dtypes, WEIGHT_DTYPES)
        _check_choices("scheduler preset", self.presets, tuple(SCHEDULER_PRESETS))
        _check_choices("router", self.routers, ROUTERS)
        for name in ("tp", "pp", "max_num_batched_tokens", "max_num_seqs"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"every {name} value must be >= 1, got {getattr(self, name)}")


def _check_choices(what: str, given: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    bad = [g for g in given if g not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")


@dataclass(frozen=True)
class Pruned:
    config: ReplicaConfig
    reason: str


@dataclass(frozen=True)
class Base:
    """What every candidate shares (not searched): model, KV format, memory share, cache and cost-model knobs."""

    model: str
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    """Weight-only quantization of every candidate (ClusterConfig.quantization)."""
    quantization_group_size: int = 32
    quantize_lm_head: bool = False
    scheduler_overrides: tuple[tuple[str, Any], ...] = ()
    """Scheduler fields fixed by the user (e.g. policy); the searched ones come from the ReplicaConfig."""
    cache: CacheConfig = CacheConfig()
    efficiency: Efficiency = Efficiency()
    router: RouterConfig = RouterConfig()
    """Prefix affinity's balance rule, for candidates that route by prefix."""
    lora: LoRAConfig = LoRAConfig()
    """Adapter slots of every candidate (with a workload that draws adapters)."""
    speculative: SpeculativeConfig | None = None
    """Speculative decoding in every candidate; None: off."""
    spec_acceptance: SpecAcceptance = SpecAcceptance()

    def setup(self, config: ReplicaConfig, replicas: int = 1, router: str = "round-robin") -> SimSetup:
        """The simulator's setup; raises DoesNotFitError when the replica does not fit in memory."""
        cluster = ClusterConfig(
            model=self.model, hardware=config.hardware, tp=config.tp, pp=config.pp, replicas=replicas, router=router,
            weight_dtype=config.weight_dtype, kv_cache_dtype=self.kv_cache_dtype,
            gpu_memory_utilization=self.gpu_memory_utilization, quantization=self.quantization,
            quantization_group_size=self.quantization_group_size, quantize_lm_head=self.quantize_lm_head,
        )
        sched = scheduler_config(config.preset, **{
            **dict(self.scheduler_overrides),
            "max_num_batched_tokens": config.max_num_batched_tokens, "max_num_seqs": config.max_num_seqs,
        })
        return resolve(cluster, sched, self.cache, self.efficiency, router=self.router, lora=self.lora,
                       speculative=self.speculative, spec_acceptance=self.spec_acceptance)


def enumerate_space(space: SearchSpace, base: Base) -> tuple[list[ReplicaConfig], list[Pruned]]:
    """Replica configs that fit in memory, and the others with why (no simulation runs here).

    Memory is checked by building the simulator's own setup, so pruning and
    simulation can never disagree. Combinations that are not configurations
    at all (a dtype the chip lacks, a TP wider than a node or not dividing the
    heads, a token budget below max_num_seqs) are dropped silently; those that
    are real but too big for memory or the GPU budget are kept as `Pruned`,
    since they explain answers.
    """
    get_model(base.model)  # an unknown model is the user's error, not a pruned configuration
    feasible: list[ReplicaConfig] = []
    pruned: list[Pruned] = []
    axes = itertools.product(space.hardware, space.tp, space.pp, space.weight_dtypes, space.presets,
                             space.max_num_batched_tokens, space.max_num_seqs)
    for hw_name, tp, pp, dtype, preset, chunk, seqs in axes:
        hw = get_hardware(hw_name)
        config = ReplicaConfig(hw.name, tp, pp, dtype, preset, chunk, seqs)
        if chunk < seqs or tp > hw.max_gpus_per_node:
            continue
        if tp * pp > space.max_gpus:
            pruned.append(Pruned(config, f"one replica needs {tp * pp} GPUs > --max-gpus {space.max_gpus}"))
            continue
        try:
            base.setup(config)
        except DoesNotFitError as err:
            pruned.append(Pruned(config, f"does not fit in memory: {_missing(str(err))}"))
            continue
        except ValueError:
            continue  # not a valid plan for this model/chip (dtype, head divisibility, layers)
        feasible.append(config)
    if not feasible and not pruned:
        raise ValueError(
            f"no valid configuration of {base.model} in the search space (check that the hardware supports the "
            "weight dtypes and that TP divides the attention heads and fits one node)"
        )
    return feasible, pruned


def _missing(message: str) -> str:
    """The 'needs X GiB ... missing per GPU' core of a DoesNotFitError message."""
    start = message.find("each GPU needs")
    end = message.find("missing per GPU")
    return message[start:end + len("missing per GPU")] if start >= 0 and end >= 0 else message

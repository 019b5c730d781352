"""Build a simulated cluster from configs and run a workload through it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace

from ..attention_layout import AttentionConfig
from ..config import CacheConfig, SchedulerConfig
from ..lora import LoRAAdmission, LoRAConfig
from ..model_config import ModelConfig
from ..request import Request
from ..spec_decode import SpeculativeConfig, Speculator
from .cluster import Cluster, SimResult
from .cost_model import CostModel, Efficiency
from .deployment import Deployment
from .engine import SimEngine
from .executor import SimExecutor
from .hardware import CatalogError, Hardware, get_hardware
from .models import get_model
from .router import ROUTERS, RouterConfig
from .scheduler import SimScheduler
from .speculation import SimSpeculation, SpecAcceptance, draft_efficiency


@dataclass(frozen=True)
class ClusterConfig:
    model: str = "llama-3.1-8b"
    """Model shape: a catalog name or a path to a HF config.json (or its directory)."""
    hardware: str = "h100-sxm"
    """Accelerator: a catalog name or a hardware profile JSON (e.g. from `calibrate`)."""
    tp: int = 1
    """Tensor-parallel GPUs per replica."""
    pp: int = 1
    """Pipeline-parallel stages per replica."""
    replicas: int = 1
    """Independent engine replicas (data parallel)."""
    router: str = "round-robin"
    """How arrivals are spread over replicas: round-robin, least-loaded, prefix-affinity."""
    weight_dtype: str = "bf16"
    """Weight format: bf16, fp16, fp8 (W8A8), int8 (W8A8), int4 (W4A16)."""
    kv_cache_dtype: str = "auto"
    """KV cache format: auto (16-bit) or fp8."""
    quantization: str | None = None
    """Weight-only quantization as the engine's --quantization runs it: int8 (per channel) or int4 (per
    group), GEMMs in --weight-dtype; None: weights in --weight-dtype."""
    quantization_group_size: int = 32
    """int4: input weights per scale and offset."""
    quantize_lm_head: bool = False
    """With --quantization: the LM head runs int8 too (the engine's --quantize-lm-head)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of device memory for weights, activations and KV cache."""
    track_token_times: bool = False
    """Record every token's time (ITL distribution); costs memory per token."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {', '.join(ROUTERS)}")


@dataclass
class SimSetup:
    """Everything resolved: what a run's JSON records as its config."""

    cluster: ClusterConfig
    deployment: Deployment
    scheduler: SchedulerConfig
    cache: CacheConfig
    efficiency: Efficiency
    router: RouterConfig = RouterConfig()
    """Prefix affinity's balance rule (with `cluster.router` prefix-affinity)."""
    attention: AttentionConfig = AttentionConfig()
    """How the engine groups decode attention: its padding is what the cost model charges."""
    lora: LoRAConfig = LoRAConfig()
    """Adapter slots: admission waits for a free one (as the engine's does), loads and deltas cost time."""
    speculative: SpeculativeConfig | None = None
    """Speculative decoding as the engine runs it (its `--speculative-config`); None: off."""
    spec_acceptance: SpecAcceptance = SpecAcceptance()
    """How often the target accepts drafts (used only with `speculative`)."""
    draft_model: ModelConfig | None = None
    """The draft model's shape (with a "draft" `speculative` config)."""
    warm_token_counts: tuple[int, ...] = ()
    """Token counts each replica starts with kernels built for (a twin of an engine that already ran in this
    process, `gemm_shapes.RUN_IN_THIS_PROCESS`); empty: a fresh process."""

    def to_dict(self) -> dict:
        return {
            **asdict(self.cluster),
            "deployment": self.deployment.to_dict(),
            "model_shape": self.deployment.model.to_dict(),
            "hardware_spec": self.deployment.hardware.to_dict(),
            "scheduler": asdict(self.scheduler),
            "cache": asdict(self.cache),
            "efficiency": self.efficiency.to_dict(),
            "router_config": asdict(self.router),
            "attention": asdict(self.attention),
            "lora": asdict(self.lora),
            **({"speculative_config": asdict(self.speculative), "spec_acceptance": asdict(self.spec_acceptance)}
               if self.speculative is not None else {}),
        }


def hardware_efficiency(hardware: Hardware, overrides: Mapping[str, float] | None = None,
                        attention_backend: str | None = None) -> Efficiency:
    """The hardware's calibrated efficiency (or the defaults) with its fields for this attention backend (None:
    the one it was fitted on), and explicit overrides on top. A profile fitted on other backends is refused: its
    K/V terms price another kernel (the cpp backend reads a decode's keys at 1.5-2x the torch backend's gather
    rate, bench/RESULTS.md)."""
    attention_backend = attention_backend or hardware.default_attention_backend
    priced = hardware.priced_attention_backends()
    if priced is not None and attention_backend not in priced:
        raise CatalogError(
            f"hardware {hardware.name!r} was fitted on the {' and '.join(priced)} attention backend"
            f"{'s' if len(priced) > 1 else ''} and cannot price {attention_backend}'s reads of the KV cache: "
            f"calibrate a profile with --attention-backend {attention_backend}, or run with --attention-backend "
            f"{priced[0]}")
    by_backend = (hardware.attention_efficiency or {}).get(attention_backend, {})
    values = {**(hardware.efficiency or {}), **by_backend, **(overrides or {})}
    if "gemm_flops" in values:  # a profile fitted on a dense model: the expert GEMMs run as its GEMMs do
        values.setdefault("expert_flops", values["gemm_flops"])
    known = {f.name for f in fields(Efficiency)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CatalogError(f"hardware {hardware.name!r}: unknown efficiency field(s) {', '.join(unknown)}; "
                           f"valid: {', '.join(sorted(known))}")
    return Efficiency(**values)


def resolve(
    cluster: ClusterConfig,
    scheduler: SchedulerConfig,
    cache: CacheConfig,
    efficiency: Efficiency | Mapping[str, float] | None = None,
    model: ModelConfig | None = None,
    router: RouterConfig = RouterConfig(),
    attention: AttentionConfig | None = None,
    lora: LoRAConfig = LoRAConfig(),
    speculative: SpeculativeConfig | None = None,
    spec_acceptance: SpecAcceptance = SpecAcceptance(),
    draft_model: ModelConfig | None = None,
) -> SimSetup:
    """Look up model and hardware, check the plan, size the KV cache from memory.

    `efficiency`: an Efficiency is used as given; a mapping overrides some fields
    of the hardware's own (calibrated profiles carry one); None takes the hardware's.
    `model`: a shape built elsewhere (e.g. the built-in `tiny`) instead of looking up `cluster.model`;
    `draft_model` likewise for a draft-model `speculative` config (None: look up its `model`).
    `attention`: the engine's attention layout; None: the hardware's default backend (`Hardware.attention_backend`).
    """
    hardware = get_hardware(cluster.hardware)
    if attention is None:
        attention = AttentionConfig(backend=hardware.default_attention_backend)
    if not isinstance(efficiency, Efficiency):
        efficiency = hardware_efficiency(hardware, efficiency, attention.backend)
    deployment = Deployment(
        model=model or get_model(cluster.model),
        hardware=hardware,
        tp=cluster.tp,
        pp=cluster.pp,
        weight_dtype=cluster.weight_dtype,
        kv_cache_dtype=cluster.kv_cache_dtype,
        gpu_memory_utilization=cluster.gpu_memory_utilization,
        quantization=cluster.quantization,
        quantization_group_size=cluster.quantization_group_size,
        quantize_lm_head=cluster.quantize_lm_head,
        max_lora_rank=lora.max_lora_rank if lora.enable_lora else 0,
    )
    if speculative is not None and speculative.method == "draft" and draft_model is None:
        draft_model = get_model(speculative.model)
    if cache.num_blocks is None:
        cache = replace(cache, num_blocks=deployment.num_kv_blocks(
            cache.block_size, scheduler.max_num_batched_tokens, draft_model if speculative is not None else None))
    return SimSetup(cluster, deployment, scheduler, cache, efficiency, router, attention, lora, speculative,
                    spec_acceptance, draft_model if speculative is not None else None)


def build_cluster(setup: SimSetup) -> Cluster:
    cost_model = CostModel(setup.deployment, setup.efficiency)
    max_loras = setup.lora.max_loras if setup.lora.enable_lora else 0
    engines = []
    for _ in range(setup.cluster.replicas):
        scheduler = SimScheduler(setup.scheduler, setup.cache, max_model_len=setup.deployment.model.max_model_len)
        if max_loras:
            scheduler.admission_check = LoRAAdmission(max_loras)
        speculation = _speculation(setup)
        if speculation is not None:
            scheduler.speculator = Speculator(setup.speculative, speculation.proposer)
        executor = SimExecutor(cost_model, setup.attention, max_loras, speculation, setup.warm_token_counts)
        engines.append(SimEngine(scheduler, executor, track_token_times=setup.cluster.track_token_times))
    return Cluster(engines, setup.cluster.router, setup.router)


def _speculation(setup: SimSetup) -> SimSpeculation | None:
    """One replica's simulated speculation; the draft model runs on the target's deployment (`draft_efficiency`)."""
    if setup.speculative is None:
        return None
    draft = setup.draft_model
    draft_cost = None if draft is None else CostModel(
        replace(setup.deployment, model=draft, pp=1, max_lora_rank=0),
        draft_efficiency(setup.efficiency, draft.num_layers, setup.deployment.model.num_layers))
    return SimSpeculation(setup.spec_acceptance, draft_cost, setup.attention)


def simulate(
    setup: SimSetup,
    requests: Iterable[Request],
    progress: Callable[[int, float], None] | None = None,
) -> SimResult:
    return build_cluster(setup).run(requests, progress=progress)

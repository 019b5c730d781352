"""Accelerator catalog for the roofline cost model.

Each entry carries only what a roofline needs: dense peak FLOP/s per compute
dtype, memory bandwidth and capacity, and the scale-up link used by tensor- and
pipeline-parallel communication. Figures come from vendor datasheets (cited per
line); a calibrated profile measured by `batchserve calibrate` can replace any of
them through a JSON file with the same fields (see `Hardware.from_dict`).

Memory capacity: vendors print "80GB" for HBM parts whose stacks are binary-sized,
and the device reports binary figures (an H100 80GB shows 81559 MiB in nvidia-smi,
i.e. 79.6 GiB, not 74.5 GiB), so catalog capacities are in GiB (x 2**30).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, dataclass, fields
from types import MappingProxyType
from typing import Any, Mapping

from ..attention_layout import ATTENTION_BACKENDS

GiB = 2**30

DTYPES = ("bf16", "fp16", "fp8", "int8", "fp32")
"""Compute dtypes a Hardware may list in `peak_flops`."""

_DTYPE_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
}


class CatalogError(ValueError):
    """A hardware or model name, file or field could not be resolved; the message says which and lists the choices."""


def normalize_dtype(dtype: str) -> str:
    """Map spellings such as "bfloat16" or "float8_e4m3fn" to the catalog's short dtype keys."""
    key = dtype.strip().lower()
    return _DTYPE_ALIASES.get(key, key)


@dataclass(frozen=True)
class Hardware:
    """One accelerator as the roofline sees it. Dense (no sparsity) peaks."""

    name: str
    """Catalog key, e.g. "h100-sxm"."""
    description: str
    """Human-readable product name, e.g. "NVIDIA H100 SXM5 80GB"."""
    peak_flops: Mapping[str, float]
    """Compute dtype -> dense FLOP/s. Keys among DTYPES; a dtype the chip lacks is absent."""
    memory_bandwidth: float
    """Peak HBM/DRAM bandwidth, bytes/s."""
    memory_bytes: float
    """Device memory, bytes."""
    interconnect_bandwidth: float
    """Bytes/s per GPU per direction on the scale-up link (NVLink / Infinity Fabric / PCIe)."""
    interconnect_latency_s: float = 5e-6
    """Launch latency of one collective or point-to-point send."""
    max_gpus_per_node: int = 8
    """Largest group sharing the scale-up link, which bounds tensor parallelism."""
    host_bandwidth: float | None = None
    """Host-to-device copy bandwidth, bytes/s (PCIe or a chip-to-chip link): LoRA adapters loaded into device
    slots. None: memory_bandwidth (a CPU, whose host memory is its device memory)."""
    cache_bytes: float = 0.0
    """A CPU's last-level cache, bytes (`calibrate` reads it): a layer's gathered decode K/V past it is read back
    from memory (`Efficiency.kv_spill_bandwidth`). 0: no such tier (GPU kernels read K/V in place)."""
    efficiency: Mapping[str, float] | None = None
    """Cost-model efficiency fields fitted on this device by `calibrate`; they replace the defaults."""
    attention_efficiency: Mapping[str, Mapping[str, float]] | None = None
    """Efficiency fields of other attention backends (backend -> fields), over `efficiency`: the CPU placeholder's
    K/V terms of the torch backend's gather beside the in-place cpp kernel's. `calibrate` writes none: its fit
    is for the backend it ran on."""
    attention_backend: str | None = None
    """The attention backend `efficiency` was fitted on, which an engine on this device runs by default and its
    simulations assume unless told otherwise (`calibrate` writes the one it ran on); None: "torch" (profiles
    calibrated before the cpp backend)."""

    def __post_init__(self) -> None:
        # Validate here so catalog entries and user profiles obey the same rules,
        # and freeze peak_flops so a shared catalog entry cannot be edited in place.
        where = f"hardware {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise CatalogError("hardware 'name' must be a non-empty string")
        if not isinstance(self.description, str):
            raise CatalogError(f"{where}: 'description' must be a string")
        if not isinstance(self.peak_flops, Mapping) or not self.peak_flops:
            raise CatalogError(f"{where}: 'peak_flops' must be a non-empty mapping of dtype -> FLOP/s, "
                               f"dtypes among {', '.join(DTYPES)}")
        flops: dict[str, float] = {}
        for dtype, value in self.peak_flops.items():
            key = normalize_dtype(str(dtype))
            if key not in DTYPES:
                raise CatalogError(f"{where}: unknown dtype {dtype!r} in 'peak_flops'; "
                                   f"valid dtypes: {', '.join(DTYPES)}")
            flops[key] = _positive(value, f"{where}: peak_flops[{dtype!r}]")
        object.__setattr__(self, "peak_flops", MappingProxyType(flops))
        for name in ("memory_bandwidth", "memory_bytes", "interconnect_bandwidth"):
            object.__setattr__(self, name, _positive(getattr(self, name), f"{where}: {name!r}"))
        if self.host_bandwidth is not None:
            object.__setattr__(self, "host_bandwidth", _positive(self.host_bandwidth, f"{where}: 'host_bandwidth'"))
        cache = self.cache_bytes
        if not _is_number(cache) or cache < 0 or not math.isfinite(cache):
            raise CatalogError(f"{where}: 'cache_bytes' must be a finite number >= 0, got {cache!r}")
        object.__setattr__(self, "cache_bytes", float(cache))
        latency = self.interconnect_latency_s
        if not _is_number(latency) or latency < 0 or not math.isfinite(latency):
            raise CatalogError(f"{where}: 'interconnect_latency_s' must be a finite number >= 0, got {latency!r}")
        object.__setattr__(self, "interconnect_latency_s", float(latency))
        gpus = self.max_gpus_per_node
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise CatalogError(f"{where}: 'max_gpus_per_node' must be an integer >= 1, got {gpus!r}")
        if self.efficiency is not None:
            if not _is_number_map(self.efficiency):
                raise CatalogError(f"{where}: 'efficiency' must map cost-model field names to numbers")
            object.__setattr__(self, "efficiency", MappingProxyType(dict(self.efficiency)))
        if self.attention_backend is not None and self.attention_backend not in ATTENTION_BACKENDS:
            raise CatalogError(f"{where}: 'attention_backend' must be one of {', '.join(ATTENTION_BACKENDS)}, "
                               f"got {self.attention_backend!r}")
        if self.attention_efficiency is not None:
            by_backend = self.attention_efficiency
            if not isinstance(by_backend, Mapping) or not all(
                    k in ATTENTION_BACKENDS and _is_number_map(v) for k, v in by_backend.items()):
                raise CatalogError(f"{where}: 'attention_efficiency' must map attention backends "
                                   f"({', '.join(ATTENTION_BACKENDS)}) to efficiency fields and numbers")
            object.__setattr__(self, "attention_efficiency",
                               MappingProxyType({k: MappingProxyType(dict(v)) for k, v in by_backend.items()}))

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.peak_flops.items())), self.memory_bandwidth, self.memory_bytes))

    @property
    def default_attention_backend(self) -> str:
        """The backend `efficiency` was fitted on, which simulations of this device assume unless told otherwise."""
        return self.attention_backend or "torch"

    def priced_attention_backends(self) -> tuple[str, ...] | None:
        """The attention backends whose key and value costs this profile's fitted efficiency holds: the one it
        was fitted on and those with terms of their own; None: any (no fitted terms, the defaults price all)."""
        if self.efficiency is None:
            return None
        return (self.default_attention_backend, *(self.attention_efficiency or {}))

    def supports(self, dtype: str) -> bool:
        """Whether the chip has a native (tensor-core) path for this compute dtype."""
        return normalize_dtype(dtype) in self.peak_flops

    def flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype`; an unsupported dtype is an error rather than a silent fallback."""
        key = normalize_dtype(dtype)
        if key not in self.peak_flops:
            raise CatalogError(f"{self.name} has no {dtype!r} compute; supported: {', '.join(self.peak_flops)}")
        return self.peak_flops[key]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict(to_dict())` gives back an equal Hardware."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["peak_flops"] = dict(self.peak_flops)
        if self.efficiency is not None:
            d["efficiency"] = dict(self.efficiency)
        if self.attention_efficiency is not None:
            d["attention_efficiency"] = {k: dict(v) for k, v in self.attention_efficiency.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hardware:
        """Build from a user/calibrated profile. Unknown keys are errors (they are usually typos);
        keys starting with "_" are ignored so profiles can carry provenance notes."""
        if not isinstance(d, Mapping):
            raise CatalogError(f"a hardware profile must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        data = {k: v for k, v in d.items() if not str(k).startswith("_")}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise CatalogError(f"unknown hardware field(s) {', '.join(map(repr, unknown))}; "
                               f"valid fields: {', '.join(names)}")
        data.setdefault("description", str(data.get("name", "")))
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            who = f" {data['name']!r}" if "name" in data else ""
            raise CatalogError(f"hardware profile{who} is missing required field(s) {', '.join(missing)}")
        return cls(**data)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_number_map(m: Any) -> bool:
    """Whether m maps names to numbers (a profile's efficiency fields)."""
    return isinstance(m, Mapping) and all(_is_number(v) for v in m.values())


def _positive(x: Any, what: str) -> float:
    if not _is_number(x) or not math.isfinite(x) or x <= 0:
        raise CatalogError(f"{what} must be a finite number > 0, got {x!r}")
    return float(x)


# --- The catalog ----------------------------------------------------------------
# Sources (vendor datasheets):
#   [H100]  NVIDIA H100 Tensor Core GPU datasheet,
#           https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   [H200]  NVIDIA H200 Tensor Core GPU product page/datasheet, https://www.nvidia.com/en-us/data-center/h200/
#   [A100]  NVIDIA A100 Tensor Core GPU datasheet,
#           https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   [L40S]  NVIDIA L40S GPU datasheet, https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413
#   [MI300X] AMD Instinct MI300X accelerator data sheet,
#           https://www.amd.com/content/dam/amd/en/documents/instinct-tech-docs/data-sheets/amd-instinct-mi300x-data-sheet.pdf
#   [GH200] NVIDIA GH200 Grace Hopper Superchip datasheet,
#           https://resources.nvidia.com/en-us-grace-cpu/grace-hopper-superchip
# NVIDIA datasheets print tensor-core peaks "with sparsity"; dense = half of that.
# fp32 is the non-tensor (CUDA-core / vector) FP32 peak, not TF32.

_CATALOG = [
    Hardware(
        name="h100-sxm",
        description="NVIDIA H100 SXM5 80GB",
        peak_flops={
            "bf16": 989.4e12,   # [H100] BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense
            "fp16": 989.4e12,   # [H100] FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense
            "fp8": 1978.9e12,   # [H100] FP8 Tensor Core 3,958 TFLOPS with sparsity -> 1,978.9 dense
            "int8": 1978.9e12,  # [H100] INT8 Tensor Core 3,958 TOPS with sparsity -> 1,978.9 dense
            "fp32": 67e12,      # [H100] FP32 67 TFLOPS
        },
        memory_bandwidth=3.35e12,     # [H100] GPU memory bandwidth 3.35 TB/s
        memory_bytes=80 * GiB,        # [H100] 80GB HBM3 (binary: 5 x 16 GiB stacks)
        interconnect_bandwidth=450e9,  # [H100] NVLink 900 GB/s (total, both directions) -> 450 GB/s per direction
        host_bandwidth=64e9,  # PCIe Gen5 x16: 64 GB/s per direction
        max_gpus_per_node=8,          # HGX H100 8-GPU baseboard
    ),
    Hardware(
        name="h200",
        description="NVIDIA H200 SXM 141GB",
        peak_flops={
            "bf16": 989.4e12,   # [H200] BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense
            "fp16": 989.4e12,   # [H200] FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense
            "fp8": 1978.9e12,   # [H200] FP8 Tensor Core 3,958 TFLOPS with sparsity -> 1,978.9 dense
            "int8": 1978.9e12,  # [H200] INT8 Tensor Core 3,958 TOPS with sparsity -> 1,978.9 dense
            "fp32": 67e12,      # [H200] FP32 67 TFLOPS
        },
        memory_bandwidth=4.8e12,      # [H200] GPU memory bandwidth 4.8 TB/s
        memory_bytes=141 * GiB,       # [H200] 141GB HBM3e (binary; nvidia-smi shows 143771 MiB = 140.4 GiB)
        interconnect_bandwidth=450e9,  # [H200] NVLink 900 GB/s total -> 450 GB/s per direction
        host_bandwidth=64e9,  # PCIe Gen5 x16: 64 GB/s per direction
        max_gpus_per_node=8,          # HGX H200 8-GPU baseboard
    ),
    Hardware(
        name="a100-80gb",
        description="NVIDIA A100 SXM4 80GB",
        peak_flops={
            "bf16": 312e12,   # [A100] BF16 Tensor Core 312 TFLOPS (624 with sparsity)
            "fp16": 312e12,   # [A100] FP16 Tensor Core 312 TFLOPS (624 with sparsity)
            "int8": 624e12,   # [A100] INT8 Tensor Core 624 TOPS (1,248 with sparsity); no FP8 on Ampere
            "fp32": 19.5e12,  # [A100] FP32 19.5 TFLOPS
        },
        memory_bandwidth=2.039e12,    # [A100] 80GB HBM2e: 2,039 GB/s (SXM)
        memory_bytes=80 * GiB,        # [A100] 80GB HBM2e (binary: nvidia-smi shows 81920 MiB)
        interconnect_bandwidth=300e9,  # [A100] NVLink 600 GB/s total -> 300 GB/s per direction
        host_bandwidth=32e9,  # PCIe Gen4 x16: 32 GB/s per direction
        max_gpus_per_node=8,          # HGX A100 8-GPU baseboard
    ),
    Hardware(
        name="a100-40gb",
        description="NVIDIA A100 SXM4 40GB",
        peak_flops={
            "bf16": 312e12,   # [A100] BF16 Tensor Core 312 TFLOPS (624 with sparsity)
            "fp16": 312e12,   # [A100] FP16 Tensor Core 312 TFLOPS (624 with sparsity)
            "int8": 624e12,   # [A100] INT8 Tensor Core 624 TOPS (1,248 with sparsity); no FP8 on Ampere
            "fp32": 19.5e12,  # [A100] FP32 19.5 TFLOPS
        },
        memory_bandwidth=1.555e12,    # [A100] 40GB HBM2: 1,555 GB/s
        memory_bytes=40 * GiB,        # [A100] 40GB HBM2 (binary: nvidia-smi shows 40960 MiB)
        interconnect_bandwidth=300e9,  # [A100] NVLink 600 GB/s total -> 300 GB/s per direction
        host_bandwidth=32e9,  # PCIe Gen4 x16: 32 GB/s per direction
        max_gpus_per_node=8,          # HGX A100 8-GPU baseboard
    ),
    Hardware(
        name="l40s",
        description="NVIDIA L40S 48GB (PCIe)",
        peak_flops={
            "bf16": 362.05e12,  # [L40S] BF16 Tensor Core 362.05 TFLOPS dense (733 with sparsity)
            "fp16": 362.05e12,  # [L40S] FP16 Tensor Core 362.05 TFLOPS dense (733 with sparsity)
            "fp8": 733e12,      # [L40S] FP8 Tensor Core 733 TFLOPS dense (1,466 with sparsity)
            "int8": 733e12,     # [L40S] INT8 Tensor Core 733 TOPS dense (1,466 with sparsity)
            "fp32": 91.6e12,    # [L40S] FP32 91.6 TFLOPS
        },
        memory_bandwidth=864e9,       # [L40S] GPU memory bandwidth 864 GB/s
        memory_bytes=48 * GiB,        # [L40S] 48GB GDDR6 with ECC (binary; ECC on leaves ~45 GiB usable)
        interconnect_bandwidth=32e9,  # [L40S] no NVLink; PCIe Gen4 x16 64 GB/s bidirectional -> 32 GB/s per direction
        host_bandwidth=32e9,  # PCIe Gen4 x16: 32 GB/s per direction
        max_gpus_per_node=8,          # common 8-GPU PCIe servers
    ),
    Hardware(
        name="mi300x",
        description="AMD Instinct MI300X 192GB (OAM)",
        peak_flops={
            "bf16": 1307.4e12,  # [MI300X] Peak BF16 1,307.4 TFLOPS (2,614.9 with sparsity)
            "fp16": 1307.4e12,  # [MI300X] Peak FP16 1,307.4 TFLOPS (2,614.9 with sparsity)
            "fp8": 2614.9e12,   # [MI300X] Peak FP8 2,614.9 TFLOPS (5,229.8 with sparsity)
            "int8": 2614.9e12,  # [MI300X] Peak INT8 2,614.9 TOPS (5,229.8 with sparsity)
            "fp32": 163.4e12,   # [MI300X] Peak FP32 vector 163.4 TFLOPS
        },
        memory_bandwidth=5.3e12,      # [MI300X] peak memory bandwidth 5.3 TB/s
        memory_bytes=192 * GiB,       # [MI300X] 192GB HBM3 (binary: 8 x 24 GiB stacks)
        # [MI300X] Infinity Fabric links at 128 GB/s peak bidirectional each; in the 8-GPU
        # platform each GPU uses 7 links to its peers: 7 x 64 GB/s = 448 GB/s per direction.
        interconnect_bandwidth=448e9,
        host_bandwidth=64e9,  # PCIe Gen5 x16: 64 GB/s per direction
        max_gpus_per_node=8,          # AMD Instinct MI300X platform, 8 OAM GPUs
    ),
    Hardware(
        name="gh200",
        description="NVIDIA GH200 Grace Hopper Superchip, 96GB HBM3",
        peak_flops={
            "bf16": 989.4e12,   # [GH200] BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense
            "fp16": 989.4e12,   # [GH200] FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense
            "fp8": 1978.9e12,   # [GH200] FP8 Tensor Core 3,958 TFLOPS with sparsity -> 1,978.9 dense
            "int8": 1978.9e12,  # [GH200] INT8 Tensor Core 3,958 TOPS with sparsity -> 1,978.9 dense
            "fp32": 67e12,      # [GH200] FP32 67 TFLOPS
        },
        memory_bandwidth=4.0e12,      # [GH200] 96GB HBM3 version: 4 TB/s
        memory_bytes=96 * GiB,        # [GH200] 96GB HBM3 (binary); the CPU's LPDDR5X is not counted
        interconnect_bandwidth=450e9,  # [GH200] GPU NVLink 900 GB/s total -> 450 GB/s per direction
        host_bandwidth=450e9,  # [GH200] NVLink-C2C 900 GB/s total -> 450 GB/s per direction
        max_gpus_per_node=4,          # quad-GH200 nodes (e.g. HPE Cray EX254n) are the largest common node
    ),
    # PLACEHOLDER for the local CPU until `batchserve calibrate` measures it and
    # writes a JSON profile that replaces it. Its peaks are calibrate's
    # measurements on this project's 2-core AVX-512 (with avx512_bf16) EPYC VM,
    # 2026-12-03 (a large packed GEMM; a 256 MiB copy, which swings 33-69 GB/s
    # there); an estimate with --sample measures this CPU's instead. Its
    # efficiency factors are the medians of 13 calibrations of SmolLM2-135M on
    # two CPU kinds of that VM (AVX-512 and AVX2; fp32 and bf16; sessions 13-15,
    # bench/results/estimate-smollm2-*-profile.json): the plain-torch backend's
    # K/V gather costs ~10x a streamed weight byte, a step ~11 ms besides its
    # math, so the GPU defaults would price a CPU's wide decodes far too cheap.
    # No fp8/int8 path is modelled. Interconnect 0 is not allowed (it would
    # divide by zero), so a loopback-ish 10 GB/s stands in; with one "GPU" per
    # node it is never used.
    Hardware(
        name="cpu-local",
        description="Local 2-core x86 CPU (placeholder until `batchserve calibrate`)",
        peak_flops={"bf16": 0.8e12, "fp32": 0.42e12},  # placeholder: one VM's measurement
        memory_bandwidth=50e9,         # placeholder: one VM's measurement
        memory_bytes=24 * GiB,         # placeholder guess
        interconnect_bandwidth=10e9,   # placeholder: loopback-ish, unused with one device
        interconnect_latency_s=5e-6,
        max_gpus_per_node=1,
        # K/V terms of the cpp backend (a CPU engine's default where a C++ compiler is found), which reads
        # decode K/V in place: the torch backend's gather terms below times what a calibration of each measured
        # on the same model, dtype and VM (SmolLM2 fp32 eager, sessions 22 and 28,
        # bench/results/fidelity-smollm2-{eager-s22,cpp-eager-s28}): keys 1.46x, shared keys 2.07x the rate,
        # a decode group's fixed cost 0.34x
        efficiency={"gemm_flops": 0.71, "attention_flops": 0.21, "memory_bandwidth": 1.0, "kv_bandwidth_ratio": 0.126,
                    "kv_shared_bandwidth_ratio": 2.3, "step_overhead_s": 0.0115, "sequence_overhead_s": 0.00025,
                    "chunk_overhead_s": 0.003, "new_shape_overhead_s": 0.0024, "decode_group_overhead_s": 0.0008,
                    "wakeup_overhead_s": 0.0056},
        attention_backend="cpp",
        attention_efficiency={"torch": {"kv_bandwidth_ratio": 0.086, "kv_shared_bandwidth_ratio": 1.11,
                                        "decode_group_overhead_s": 0.0024}},
    ),
]

HARDWARE: dict[str, Hardware] = {hw.name: hw for hw in _CATALOG}
"""The hardware catalog, keyed by name."""

_ALIASES = {
    "h100": "h100-sxm",
    "h100-sxm5": "h100-sxm",
    "h100-80gb": "h100-sxm",
    "h200-sxm": "h200",
    "h200-141gb": "h200",
    "a100": "a100-80gb",
    "a100-sxm": "a100-80gb",
    "a100-80g": "a100-80gb",
    "a100-40g": "a100-40gb",
    "l40s-48gb": "l40s",
    "amd-mi300x": "mi300x",
    "mi300": "mi300x",
    "gh200-96gb": "gh200",
    "cpu": "cpu-local",
}


def get_hardware(name_or_path: str) -> Hardware:
    """Resolve a catalog name or alias (case-insensitive), or load a JSON profile file (a path ending in .json)."""
    text = str(name_or_path).strip()
    if text.lower().endswith(".json"):
        return load_hardware_file(text)
    key = text.lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key in HARDWARE:
        return HARDWARE[key]
    raise CatalogError(
        f"unknown hardware {name_or_path!r}; valid names: {', '.join(HARDWARE)} "
        f"(aliases: {', '.join(_ALIASES)}), or a path to a .json hardware profile"
    )


def load_hardware_file(path: str | os.PathLike[str]) -> Hardware:
    """Load a hardware profile (a `Hardware.to_dict()` JSON object), naming the file in any error."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CatalogError(f"hardware profile {str(path)!r} does not exist; "
                           f"valid names: {', '.join(HARDWARE)}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CatalogError(f"cannot read hardware profile {str(path)!r}: {e}") from None
    try:
        return Hardware.from_dict(data)
    except (CatalogError, TypeError) as e:
        raise CatalogError(f"hardware profile {str(path)!r}: {e}") from None

"""Scheduler and cache configuration, and the named scheduler presets.

Every tunable is a typed, documented field here; the CLI exposes each as a
flag of the same name. A preset (`vllm`, `sarathi`, `orca`) is only a set of
field values, never a separate scheduler class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

POLICIES = ("fcfs", "priority", "edf", "lpm")
QUANTIZATION_METHODS = ("int8", "int4", "gguf")
"""Weight quantizations a model can be loaded with (models/quantization.py); None loads the weights as they are."""
INT4_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantizationConfig:
    method: str | None = None
    """int8: per output channel; int4: per group of input weights; gguf: a GGUF file's own 4-bit blocks
    as int4 (group 32), its other quantized tensors as int8; None: the weights as they are in `dtype`."""
    group_size: int = 32
    """int4: input weights per scale and offset (32, 64 or 128). 32 is GGUF's block, the most accurate,
    divides every common hidden size (SmolLM2's 576 is not a multiple of 128) and measured as fast."""
    quantize_lm_head: bool = False
    """With a method: the LM head runs int8 per vocabulary row too (a copy of the embedding table when the
    two are tied; the lookup keeps `dtype`); int8 under int4 and gguf as well, as a 4-bit head cost SmolLM2
    0.04 nats of KL and 14% of its argmax agreement. Off by default: on SmolLM2 it took int8's KL from
    0.0074 to 0.0105 nats (over the 0.01 budget) and, idle, batch-1 decode gained 8% under int8 and lost
    8% under int4 in eager steps; with compiled steps under gguf it gained 11-18% (session 17: the bf16 head
    streams more bytes than the 4-bit projections; bench/RESULTS.md); it saves the head's memory."""

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in QUANTIZATION_METHODS:
            raise ValueError(f"quantization {self.method!r} is not supported; use None or one of "
                             f"{', '.join(QUANTIZATION_METHODS)}")
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"quantization group size {self.group_size} is not supported; use one of "
                             f"{', '.join(map(str, INT4_GROUP_SIZES))}")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 8192
    """Token budget of one step: prefill chunks plus decodes."""
    max_num_seqs: int = 256
    """At most this many requests run (hold KV blocks) at once."""
    enable_chunked_prefill: bool = True
    """Split a prompt across steps to fit the token budget (Sarathi-Serve)."""
    prefill_first: bool = False
    """A step that can admit a waiting prompt runs prefills only, pausing decodes (vLLM v0)."""
    policy: str = "fcfs"
    """Order of the waiting queue: fcfs, priority, edf (earliest deadline), lpm (longest cached prefix)."""
    long_prefill_token_threshold: int = 0
    """Cap on one request's prefill chunk per step, so several prompts progress together; 0 = no cap."""
    watermark: float = 0.01
    """Fraction of KV blocks kept free when admitting a waiting request, so running ones rarely preempt."""
    lpm_window: int = 256
    """`lpm` re-ranks only the first this-many waiting requests (by arrival) each step, bounding its cost."""
    admission_lookahead: int = 256
    """When an admission check (LoRA slots) refuses a waiting request, try up to this many behind it, as
    vLLM skips such requests; 0 = strict head-of-line (one request for a non-resident adapter blocks all)."""

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running decode fits one step; raise the first or lower the second"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be >= 0 (0 disables it)")
        if self.lpm_window < 1:
            raise ValueError(f"lpm_window must be >= 1, got {self.lpm_window}")
        if self.admission_lookahead < 0:
            raise ValueError(f"admission_lookahead must be >= 0, got {self.admission_lookahead}")


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    """Tokens per KV block."""
    num_blocks: int | None = None
    """KV blocks in the pool; None derives it from the memory left after weights and activations."""
    enable_prefix_caching: bool = True
    """Share full blocks between requests with the same prefix (hash-chained)."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")


MAX_CUDAGRAPH_CAPTURE_SIZE = 512
"""The default ladder's top when max_num_seqs is larger (vLLM's default cap)."""


@dataclass(frozen=True)
class CompilationConfig:
    """Compiled decode steps (with enforce_eager=False): which batch sizes get their own captured step, vLLM's keys.

    On the flex attention backend a pure decode step of B rows is padded to the smallest capture size >= B
    (the padding rows write a scratch KV block and are dropped) and runs compiled, on CUDA as a CUDA graph
    replay (torch.compile's reduce-overhead mode); a step above the largest size, or one with prompt chunks,
    runs eagerly. The torch backend compiles decode steps of any size and pads nothing.
    """

    cudagraph_capture_sizes: tuple[int, ...] | None = None
    """Decode batch sizes to capture; None: 1, 2, 4, then every multiple of 8 up to 256 and of 16 above, up to
    max_cudagraph_capture_size (vLLM's ladder)."""
    max_cudagraph_capture_size: int | None = None
    """The largest size captured: the default ladder ends there, sizes above it are dropped; None: max_num_seqs,
    at most 512."""
    inductor_compile_config: dict[str, Any] | None = None
    """Inductor settings for the compiled decode step (torch.compile's `options`), e.g. {"max_autotune": true,
    "freezing": true} with weight_prepack=False on a CPU: inductor benchmarks its own GEMM kernels against
    oneDNN's per shape (minutes more compiling; 1.18x the default compiled bf16 batch-1 step in session 9, no gain
    in session 17, bench/RESULTS.md). On a CPU the step starts from CPU_INDUCTOR_DEFAULTS (models/compiled_decode.py:
    inductor's C++ wrapper), and its one-row graph from ONE_ROW_INDUCTOR_DEFAULTS too; settings here override
    those."""
    compile_regions: bool = False
    """Torch attention backend: compile one decoder layer and run that graph for every layer (regional
    compilation), the embedding, RoPE tables and final norm eagerly: one graph to compile instead of the
    whole step's (SmolLM2-135M bf16: 14 s instead of 254 s, but 1.04x eager's batch-1 step where the whole
    step's graph gives 1.20x; one thread, loaded machine, bench/bench_decode.py --modes eager,compiled,regions)."""
    row_major_gemv: bool = True
    """CPU with weight_prepack: keep each packed projection's weight in its plain row-major layout too, which a
    one-row compiled decode step streams through an inductor-generated multiply-and-reduce (a GEMV) instead of
    oneDNN's packed GEMM, which reaches about two thirds of the memory bandwidth at one row (models/linear.py).
    The cost: the projections' weights twice in memory; skipped, with a warning, where the copy would take more
    than half the free memory. False: one copy, every row count through oneDNN."""

    def __post_init__(self) -> None:
        sizes = self.cudagraph_capture_sizes
        if sizes is not None:
            if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
                raise ValueError(f"cudagraph_capture_sizes must be positive integers, got {list(sizes)}")
            object.__setattr__(self, "cudagraph_capture_sizes", tuple(sorted(set(sizes))))
        top = self.max_cudagraph_capture_size
        if top is not None and (not isinstance(top, int) or top < 1):
            raise ValueError(f"max_cudagraph_capture_size must be a positive integer, got {top!r}")
        if self.inductor_compile_config is not None and not isinstance(self.inductor_compile_config, dict):
            raise ValueError("inductor_compile_config must be a JSON object of inductor settings, e.g. "
                             f'{{"max_autotune": true}}, got {self.inductor_compile_config!r}')
        if self.compile_regions not in (True, False):  # JSON true/false (0 and 1 pass as the same)
            raise ValueError(f"compile_regions must be true or false, got {self.compile_regions!r}")
        if self.row_major_gemv not in (True, False):
            raise ValueError(f"row_major_gemv must be true or false, got {self.row_major_gemv!r}")

    @classmethod
    def of(cls, value: CompilationConfig | dict[str, Any] | str | None) -> CompilationConfig:
        """From a dict or a JSON object string (vLLM's `--compilation-config`); None gives the defaults."""
        if value is None or isinstance(value, CompilationConfig):
            return value or cls()
        value = json_config(value, cls, "compilation config", '{"max_cudagraph_capture_size": 64}')
        sizes = value.get("cudagraph_capture_sizes")
        if sizes is not None and not isinstance(sizes, (list, tuple)):
            raise ValueError(f"cudagraph_capture_sizes must be a list of positive integers, got {sizes!r}")
        return cls(**{**value, "cudagraph_capture_sizes": None if sizes is None else tuple(sizes)})

    def capture_sizes(self, max_num_seqs: int) -> tuple[int, ...]:
        """The ladder for an engine running at most max_num_seqs requests: no size above what a step can hold."""
        if self.cudagraph_capture_sizes is not None:
            top = self.max_cudagraph_capture_size or max(self.cudagraph_capture_sizes)
            return tuple(s for s in self.cudagraph_capture_sizes if s <= top) or (1,)
        top = self.max_cudagraph_capture_size or min(max_num_seqs, MAX_CUDAGRAPH_CAPTURE_SIZE)
        ladder = (1, 2, 4, *range(8, 256, 8), *range(256, top, 16), top)
        return tuple(sorted({s for s in ladder if s <= top}))

    def decode_rows(self, backend: str, max_num_seqs: int) -> int:
        """The most rows of a pure decode step the compiled graph runs: the flex backend's largest capture size
        (a wider step runs eagerly), any step's on the torch backend (AttentionConfig.compiled_decode_rows)."""
        return min(self.capture_sizes(max_num_seqs)[-1], max_num_seqs) if backend == "flex" else max_num_seqs


def compiles_decode(enforce_eager: bool, enable_lora: bool) -> bool:
    """Whether an engine compiles its pure decode steps: with enforce_eager=False and no LoRA (adapter deltas
    run eagerly)."""
    return not enforce_eager and not enable_lora


def json_config(value: dict[str, Any] | str, cls: type, name: str, example: str) -> dict[str, Any]:
    """The fields of config class `cls` from a dict or a JSON object string (vLLM's `--*-config JSON` flags),
    with no key it does not have; `name` and `example` word the errors."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} is not valid JSON ({err.msg}); give e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")  # noqa: TRY004
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown {name} key(s) {unknown}; known: {sorted(known)}")
    return value


# Presets as users know them. Values not named keep the SchedulerConfig default.
SCHEDULER_PRESETS: dict[str, dict[str, Any]] = {
    # vLLM v0 default: whole prompts, prefill steps pause decodes.
    "vllm": dict(enable_chunked_prefill=False, prefill_first=True, max_num_batched_tokens=8192),
    # Sarathi-Serve: decodes first (stall-free), prompts chunked into the leftover budget.
    "sarathi": dict(enable_chunked_prefill=True, prefill_first=False, max_num_batched_tokens=512),
    # Orca: iteration-level batching, whole prompts mixed with decodes.
    "orca": dict(enable_chunked_prefill=False, prefill_first=False, max_num_batched_tokens=8192),
}


def expert_batching(max_num_seqs: int, max_num_batched_tokens: int, num_experts: int, top_k: int,
                    target_tokens_per_expert: int) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) raised so a full decode step gives each expert
    `target_tokens_per_expert` rows on average: ceil(target * E / k) requests under uniform routing.

    An MoE decode step of B requests gives each expert ~B*k/E rows, and below a few dozen rows an expert's GEMM
    is bound by reading its weights: offline work runs faster with decode batches sized for the experts, not for
    a dense model of the same active size (MoE-Gen's point). KV blocks still bound the batch the scheduler admits.
    0 (or a dense model, num_experts 0) leaves both limits as they are.
    """
    if target_tokens_per_expert < 0:
        raise ValueError(f"target_tokens_per_expert must be >= 0 (0 = off), got {target_tokens_per_expert}")
    if not target_tokens_per_expert or not num_experts:
        return max_num_seqs, max_num_batched_tokens
    seqs = max(max_num_seqs, -(-target_tokens_per_expert * num_experts // top_k))
    return seqs, max(max_num_batched_tokens, seqs)


def scheduler_config(preset: str | None = None, **overrides: Any) -> SchedulerConfig:
    """Build a SchedulerConfig from a preset name plus explicit overrides (overrides win)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in SCHEDULER_PRESETS:
            raise ValueError(
                f"unknown scheduler preset {preset!r}; choose one of {', '.join(SCHEDULER_PRESETS)}"
            )
        values.update(SCHEDULER_PRESETS[preset])
    known = {f.name for f in fields(SchedulerConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown scheduler field(s) {sorted(unknown)}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SchedulerConfig(**values)



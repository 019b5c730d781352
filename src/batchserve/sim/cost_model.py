"""Predict one step's duration from its batch: a roofline per operator.

Each operator takes max(FLOPs / achieved FLOP/s, bytes / achieved bandwidth)
on one GPU of the TP group; a step runs every layer in sequence (pipeline
stages too: PP micro-batch overlap is not modelled, which is conservative for
throughput), plus TP all-reduces, PP sends and a fixed per-step overhead. The
efficiency factors are named fields that `calibrate` fits from measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np

from ..model_config import kv_bytes_per_token
from .deployment import Deployment
from .experts import expected_active_experts
from .quantization import quantized_weight_bytes

_DEPLOYMENT = "deployment's"
"""CostModel._gemm's default: the weights are stored as the deployment quantizes its layers."""


def _any(x: float | np.ndarray) -> bool:
    """Whether a step count (or any of an array of them, one per step) is nonzero."""
    return bool(x.any()) if isinstance(x, np.ndarray) else bool(x)


def shape_columns(shapes: Sequence[StepShape]) -> tuple[np.ndarray, ...]:
    """One float array per `StepShape` field, an entry per step: `CostModel.step_time`'s arguments for pricing
    many steps in one call (calibration's fit prices hundreds of steps thousands of times)."""
    return tuple(np.array(shapes, dtype=float).reshape(len(shapes), len(StepShape._fields)).T)


@dataclass(frozen=True)
class Efficiency:
    """Fractions of datasheet peaks a real engine achieves, and fixed costs.

    Defaults are typical of vLLM on Hopper-class GPUs; `calibrate` replaces
    them with values fitted on the user's own device.
    """

    gemm_flops: float = 0.70
    """GEMMs (QKV, O, MLP, experts, LM head) reach this fraction of peak FLOP/s."""
    attention_flops: float = 0.50
    """Prefill attention (flash-style kernels) reaches this fraction of peak FLOP/s."""
    memory_bandwidth: float = 0.85
    """Streaming weights and KV reaches this fraction of peak memory bandwidth."""
    expert_flops: float = 0.70
    """An MoE layer's routed-expert GEMMs reach this fraction of peak FLOP/s: each runs on its tokens only, after
    the dispatch's sort and gather (`calibrate` fits it on an MoE model; dense models leave it unused)."""
    kv_bandwidth_ratio: float = 1.0
    """Attention reads the KV cache at this multiple of `memory_bandwidth`'s rate: decode keys (padding included)
    and a prompt chunk's cached context. 1 on paged GPU kernels, which read in place; the plain-torch CPU backend
    first gathers each row's blocks into a contiguous copy, so a key costs more than a weight byte and `calibrate`
    fits the ratio from decode batches whose keys vary apart from their rows."""
    kv_shared_bandwidth_ratio: float = 1.0
    """Decode keys read from a block another row of the step read before (rows sharing a cached prefix) cost
    this multiple of the other keys' rate: on a CPU the block is still in its caches (a 64-row decode over one shared
    prefix took 1/1.18 of the same keys read from 64 rows' own blocks); 1 where attention reads every row from HBM."""
    kv_spill_bandwidth: float = 1.0
    """The plain-torch backend gathers each layer's decode K/V into a padded copy, then attends it: past the CPU's
    last-level cache (`Hardware.cache_bytes`) the copy is read back from memory, at this fraction of peak memory
    bandwidth (SmolLM2 fp32 on a 32 MiB L3: 0.10, fitted with the capacity free it found 29.7 MiB)."""
    interconnect_bandwidth: float = 0.70
    """All-reduce and pipeline sends reach this fraction of link bandwidth."""
    step_overhead_s: float = 0.001
    """Fixed cost of every step: scheduling, input preparation, sampling, launches."""
    token_overhead_s: float = 0.0
    """Cost per scheduled token outside the GEMMs and attention (norms, activations, input preparation);
    negligible on GPUs, real on CPUs, so `calibrate` fits it."""
    sequence_overhead_s: float = 0.0
    """Cost per sequence sampled in a step (sampling over the vocabulary, per-request bookkeeping)."""
    chunk_overhead_s: float = 0.0
    """Cost per prompt chunk in a step beyond its tokens (e.g. its own attention launch in every layer)."""
    structured_overhead_s: float = 0.0
    """Cost per sampled row under a structured-output grammar: filling its token bitmask and applying it."""
    lora_flops: float = 0.5
    """LoRA delta GEMMs (each adapter segment's rank-r shrink and expand) reach this fraction of peak FLOP/s;
    such thin GEMMs run well below the base GEMMs' rate."""
    lora_segment_overhead_s: float = 0.0
    """Cost per adapter segment in a step beyond its FLOPs and bytes: its shrink and expand launches in every
    layer, the row slicing."""
    dequant_overhead_s: float = 0.0
    """Cost per million quantized weights a step reads (weight-only int8/int4), beyond their bytes: unpacking
    them to the activation dtype inside the GEMM. A CPU kernel's real cost, so `calibrate --quantization` fits it."""
    new_shape_overhead_s: float = 0.0
    """Cost of a step whose flat token count the process runs for the first time: a CPU GEMM library (oneDNN)
    builds its kernels once per new row count (a tiny model's 3 ms prefill took 8 ms the first time); ~0 on GPUs."""
    decode_group_overhead_s: float = 0.0
    """Cost per decode group in a step beyond its keys: the plain-torch backend gathers each group's K/V and runs
    one attention call for it in every layer (`attention_layout.decode_groups`)."""
    wakeup_overhead_s: float = 0.0
    """Cost of a step that starts when the engine had been idle (a request arrived to an empty engine), beyond the
    same step run back to back: the serving loop's sleep overshoot, waking the CPU and the GEMM library's parked
    worker threads, cold caches. Most first tokens of a lightly loaded server pay it; `calibrate` measures it by
    sleeping before some steps."""
    proposer_overhead_s: float = 0.0
    """Speculative decoding: host cost per request proposing drafts in a step (an n-gram lookup; a draft
    model's input preparation beyond its forward steps, which the draft's own shape prices)."""
    draft_step_overhead_s: float = 0.0
    """Speculative decoding with a draft model: fixed cost of one draft forward step (its input preparation, its
    layers' launches, the argmax read back; no scheduler, no sampler), in place of the target's `step_overhead_s`.
    `calibrate --speculative-config` with a draft model measures it on the draft's own steps; 0 otherwise."""
    compiled_overhead_ratio: float = 1.0
    """A compiled decode step's fixed cost (`StepShape.num_compiled_rows`) as a multiple of `step_overhead_s`: one
    graph call in place of every op's dispatch in every layer. 1: priced as an eager step (a profile calibrated
    without compiled steps)."""
    gemv_bandwidth_ratio: float = 1.0
    """A compiled one-row decode step's weight reads (layers and LM head) at this multiple of the GEMMs' bandwidth:
    on a CPU its projections stream their row-major weights through a GEMV instead of the packed GEMM
    (models/linear.py). 1: read as a GEMM reads them (a profile calibrated without compiled steps)."""
    time_scale: float = 1.0
    """Multiplier on every predicted step: how much slower (>1) or faster the machine runs now than its profile
    says, measured on a job's own steps (a shared machine, other threads, a different day)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("time_scale", "kv_bandwidth_ratio", "kv_shared_bandwidth_ratio", "compiled_overhead_ratio",
                          "gemv_bandwidth_ratio"):
                if not value > 0:
                    raise ValueError(f"{f.name} must be > 0, got {value}")
            elif f.name.endswith("overhead_s"):
                if not value >= 0:
                    raise ValueError(f"{f.name} must be >= 0, got {value}")
            elif not 0 < value <= 1:
                raise ValueError(f"efficiency {f.name} must be in (0, 1], got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


class StepShape(NamedTuple):
    """One step as the cost model sees it; the arguments of `CostModel.step_time`, in order."""

    num_prefill_tokens: int = 0
    prefill_attended_pairs: float = 0.0
    prefill_context_tokens: int = 0
    num_decodes: int = 0
    decode_context_tokens: int = 0
    num_sampling: int = 0
    num_prefill_seqs: int = 0
    decode_key_tokens: int = 0
    """Keys the decodes' attention reads: `decode_context_tokens` (each row's keys, its new token
    included) plus the padding of the engine's decode groups (`attention_layout.decode_groups`)."""
    num_constrained: int = 0
    """Sampled rows under a structured-output grammar."""
    num_lora_tokens: int = 0
    """Tokens of rows that run under a LoRA adapter (base rows pay no delta)."""
    num_lora_segments: int = 0
    """Distinct adapters in the step: each is one segment, whose A and B weights the step reads once."""
    num_lora_loads: int = 0
    """Adapters copied into a device slot before the step (not resident at the end of the previous one)."""
    num_new_shapes: int = 0
    """1 when the step's flat token count is new to the process (`SeenTokenCounts`), else 0."""
    num_decode_groups: int = 0
    """Attention calls per layer the decodes make: the engine's decode groups."""
    num_proposals: int = 0
    """Speculative decoding: requests whose drafts were proposed this step (`proposer_overhead_s` each)."""
    num_draft_logits: int = 0
    """Speculative decoding: logits rows of verified drafts, beyond one per verifying request. They cost LM-head
    rows only: the request is sampled once (`sequence_overhead_s`), its k + 1 rows in one vectorised pass."""
    num_wakeups: int = 0
    """1 when the step starts on an engine that had been idle (`wakeup_overhead_s`), else 0."""
    decode_shared_key_tokens: int = 0
    """Of `decode_key_tokens`, those a decode row reads from a block another decode row of the step read before it
    (a prefix-cache hit they share): `kv_shared_bandwidth_ratio` prices them."""
    num_compiled_rows: int = 0
    """The step's rows when it runs through the engine's compiled decode graph (AttentionConfig.compiled_rows),
    else 0: `compiled_overhead_ratio` prices its fixed cost, `gemv_bandwidth_ratio` a one-row step's weights."""


class CostModel:
    """Step durations for one replica of a deployment."""

    def __init__(self, deployment: Deployment, efficiency: Efficiency = Efficiency()) -> None:
        self.deployment = deployment
        self.efficiency = efficiency
        d, m, hw, eff = deployment, deployment.model, deployment.hardware, efficiency
        tp = d.tp
        self.num_layers = m.num_layers
        self.flops = hw.peak_flops[d.compute_dtype] * eff.gemm_flops
        self.expert_flops = hw.peak_flops[d.compute_dtype] * eff.expert_flops
        # attention and the LoRA deltas run in 16-bit (flash kernels dequantise fp8/int KV; adapter slots hold
        # the activation dtype whatever the base weights are) unless the model is fp32
        activation_dtype = "bf16" if hw.supports("bf16") and d.compute_dtype != "fp32" else d.compute_dtype
        self.attn_flops = hw.peak_flops[activation_dtype] * eff.attention_flops
        self.bandwidth = hw.memory_bandwidth * eff.memory_bandwidth
        self.kv_bandwidth = self.bandwidth * eff.kv_bandwidth_ratio
        self.kv_shared_bandwidth = self.kv_bandwidth * eff.kv_shared_bandwidth_ratio
        self.kv_spill_bandwidth = hw.memory_bandwidth * eff.kv_spill_bandwidth
        self.cache_bytes = hw.cache_bytes or float("inf")  # 0: no spill tier
        wb, ab = d.weight_bytes_per_param, d.activation_bytes
        h, inter = m.hidden_size, m.intermediate_size
        q, kv = m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
        # Per-layer GEMMs on one TP rank, as (in_features, out_features): column then row parallel.
        self._dense_gemms = [(h, (q + 2 * kv) / tp), (q / tp, h)]
        self._mlp_gemms = [(h, 2 * inter / tp), (inter / tp, h)]
        self.wb, self.ab = wb, ab
        self.num_experts, self.top_k = m.num_experts, m.num_experts_per_tok
        # MoE extras: Qwen2-MoE's always-on shared expert and its one-output gate, and the dense MLP of the
        # layers an MoE model keeps dense (mlp_only_layers); a layer's cost is the average over its kinds
        shared, dense_inter = m.shared_expert_intermediate_size, m.dense_intermediate_size or inter
        self._shared_gemms = [(h, 2 * shared / tp), (shared / tp, h), (h, 1)] if shared else []
        self._dense_mlp_gemms = [(h, 2 * dense_inter / tp), (dense_inter / tp, h)]
        self.moe_layer_share = m.num_moe_layers / m.num_layers
        # Attention per layer on one rank.
        self.heads = m.num_attention_heads / tp
        self.head_dim = m.head_dim
        self.kv_bytes_per_token = kv_bytes_per_token(m, d.kv_bytes_per_element, tp, num_layers=1)
        self.hidden, self.vocab = h, m.vocab_size
        self.tp, self.pp = tp, d.pp
        self.link_bw = hw.interconnect_bandwidth * eff.interconnect_bandwidth
        self.link_latency = hw.interconnect_latency_s
        self.overhead = eff.step_overhead_s
        self.token_overhead = eff.token_overhead_s
        self.sequence_overhead = eff.sequence_overhead_s
        self.chunk_overhead = eff.chunk_overhead_s
        self.structured_overhead = eff.structured_overhead_s
        self.proposer_overhead = eff.proposer_overhead_s
        self.compiled_overhead_ratio = eff.compiled_overhead_ratio
        self.gemv_bandwidth_ratio = eff.gemv_bandwidth_ratio
        self.time_scale = eff.time_scale
        # LoRA: slots are sized for max_lora_rank, so every adapter costs what a rank-R one does. Per layer, a
        # projection with `parts` fused outputs holds R x (parts * in + out) slot elements, and each token
        # under an adapter runs 2 FLOPs per element (shrink and expand).
        rank = d.max_lora_rank
        parts = (3, 1, 2, 1)  # qkv, o, gate_up, down: as the (in, out) pairs above
        self.lora_layer_elements = rank * sum(p * k + n for p, (k, n) in zip(parts, self._dense_gemms + self._mlp_gemms))
        self.lora_flops = hw.peak_flops[activation_dtype] * eff.lora_flops
        self.host_bandwidth = hw.host_bandwidth or hw.memory_bandwidth
        self.lora_segment_overhead = eff.lora_segment_overhead_s
        self.quantization, self.group_size = d.quantization, d.quantization_group_size
        self.lm_head_quantization = d.lm_head_quantization
        self.dequant_overhead = eff.dequant_overhead_s / 1e6  # per weight
        self.new_shape_overhead = eff.new_shape_overhead_s
        self.decode_group_overhead = eff.decode_group_overhead_s
        self.wakeup_overhead = eff.wakeup_overhead_s
        # Per token count (a step's GEMM and LM-head times depend on nothing else): steps repeat counts, and
        # calibration's fit prices every measured step thousands of times.
        self._layer_gemm_times: dict[int, float] = {}
        self._lm_head_times: dict[int, float] = {}

    # ---- operators ------------------------------------------------------------

    def _gemm(self, tokens: float, k: float, n: float, weight_copies: float = 1.0, uses: float = 1.0,
              flops_per_s: float | None = None, quantization: str | None = _DEPLOYMENT) -> float:
        """A [tokens x k] @ [k x n] GEMM; `weight_copies` weight matrices read, `uses` multiplies the FLOPs.

        `quantization` (default: the deployment's; None: unquantized): the weights stream packed and are
        dequantized once per read.
        """
        method = self.quantization if quantization == _DEPLOYMENT else quantization
        compute = 2.0 * tokens * k * n * uses / (flops_per_s or self.flops)
        activations = tokens * uses * (k + n) * self.ab
        if method is None:
            return np.maximum(compute, (weight_copies * k * n * self.wb + activations) / self.bandwidth)
        weights = weight_copies * quantized_weight_bytes(k, n, method, self.group_size)
        dequant = weight_copies * k * n * self.dequant_overhead
        return np.maximum(compute, (weights + activations) / self.bandwidth) + dequant

    def expert_gemm_time(self, tokens: int) -> float:
        """One MoE layer's routed experts: the expected touched experts' weights read, top_k rows per token."""
        touched = expected_active_experts(self.num_experts, self.top_k, tokens)
        return sum(self._gemm(tokens, k, n, weight_copies=touched, uses=self.top_k, flops_per_s=self.expert_flops)
                   for k, n in self._mlp_gemms)

    def layer_gemm_time(self, tokens: int) -> float:
        """GEMM time of a decoder layer; for an MoE model with dense layers, the average over its layers."""
        if isinstance(tokens, np.ndarray):
            return self._layer_gemm_time(tokens)
        t = self._layer_gemm_times.get(tokens)
        if t is None:
            t = self._layer_gemm_times[tokens] = self._layer_gemm_time(tokens)
        return t

    def _layer_gemm_time(self, tokens: int) -> float:
        t = sum(self._gemm(tokens, k, n) for k, n in self._dense_gemms)
        if not self.num_experts:
            return t + sum(self._gemm(tokens, k, n) for k, n in self._mlp_gemms)
        moe = self.expert_gemm_time(tokens) + self._gemm(tokens, self.hidden, self.num_experts / self.tp)  # + router
        moe += sum(self._gemm(tokens, k, n) for k, n in self._shared_gemms)
        dense = sum(self._gemm(tokens, k, n) for k, n in self._dense_mlp_gemms)
        return t + self.moe_layer_share * moe + (1 - self.moe_layer_share) * dense

    def prefill_attention_time(self, num_tokens: int, attended_pairs: float, context_tokens: int) -> float:
        """Causal attention of prompt chunks: `attended_pairs` = sum of n*(context + (n+1)/2)."""
        flops = 4.0 * self.head_dim * self.heads * attended_pairs
        nbytes = 2 * num_tokens * self.heads * self.head_dim * self.ab
        return np.maximum(flops / self.attn_flops, nbytes / self.bandwidth + context_tokens * self.kv_bytes_per_token
                          / self.kv_bandwidth)

    def decode_attention_time(self, num_decodes: int, key_tokens, shared_key_tokens: float = 0.0):
        """One query token per request against `key_tokens` keys read in all (padding included), of which
        `shared_key_tokens` were read by another row of the step before; numpy-friendly.

        Padded keys cost like real ones: the plain-torch backend gathers and attends them (masked).
        """
        flops = 4.0 * self.head_dim * self.heads * key_tokens
        nbytes = 2 * num_decodes * self.heads * self.head_dim * self.ab
        kv = self.kv_bytes_per_token * ((key_tokens - shared_key_tokens) / self.kv_bandwidth
                                        + shared_key_tokens / self.kv_shared_bandwidth)
        return np.maximum(flops / self.attn_flops, nbytes / self.bandwidth + kv + self.kv_spill_time(key_tokens))

    def kv_spill_time(self, key_tokens):
        """Reading back the part of a layer's gathered decode K/V (`key_tokens` keys) past the last-level cache."""
        return np.maximum(0.0, key_tokens * self.kv_bytes_per_token - self.cache_bytes) / self.kv_spill_bandwidth

    def lora_time(self, num_tokens: int, num_segments: int, num_loads: int) -> float:
        """Adapter deltas of `num_tokens` rows in `num_segments` segments, after `num_loads` slot copies.

        Each segment reads its adapter's A and B once per layer (a roofline with the delta FLOPs); a load
        copies one adapter's slot from host memory at `host_bandwidth`.
        """
        if not _any(num_segments):
            return 0.0
        elements = self.lora_layer_elements
        per_layer = np.maximum(2.0 * elements * num_tokens / self.lora_flops,
                               num_segments * elements * self.ab / self.bandwidth)
        return (num_segments > 0) * (self.num_layers * per_layer + self.lora_load_time(num_loads)
                                     + self.lora_segment_overhead * num_segments)

    def lora_load_time(self, num_loads: int) -> float:
        """Copying `num_loads` adapters into device slots (every layer's A and B, slot-sized)."""
        return num_loads * self.num_layers * self.lora_layer_elements * self.ab / self.host_bandwidth

    def lm_head_time(self, num_sampling: int) -> float:
        if isinstance(num_sampling, np.ndarray):
            return self._lm_head_time(num_sampling)
        t = self._lm_head_times.get(num_sampling)
        if t is None:
            t = self._lm_head_times[num_sampling] = self._lm_head_time(num_sampling)
        return t

    def _lm_head_time(self, num_sampling: int) -> float:
        t = self._gemm(num_sampling, self.hidden, self.vocab / self.tp, quantization=self.lm_head_quantization)
        if self.tp > 1:  # gather the vocab shards' logits
            t += self._collective(num_sampling * self.vocab * 4 * (self.tp - 1) / self.tp)
        return t * (num_sampling > 0)  # no row sampled: no LM head

    def _collective(self, nbytes: float) -> float:
        return self.link_latency + nbytes / self.link_bw

    def communication_time(self, tokens: int) -> float:
        """Two ring all-reduces per layer under TP; one activation send per stage boundary under PP."""
        activation = tokens * self.hidden * self.ab
        t = 0.0
        if self.tp > 1:
            t += 2 * self.num_layers * self._collective(2 * (self.tp - 1) / self.tp * activation)
        if self.pp > 1:
            t += (self.pp - 1) * self._collective(activation)
        return t

    # ---- steps -------------------------------------------------------------------

    def step_time(
        self,
        num_prefill_tokens: int = 0,
        prefill_attended_pairs: float = 0.0,
        prefill_context_tokens: int = 0,
        num_decodes: int = 0,
        decode_context_tokens: int = 0,
        num_sampling: int = 0,
        num_prefill_seqs: int = 0,
        decode_key_tokens: int = 0,
        num_constrained: int = 0,
        num_lora_tokens: int = 0,
        num_lora_segments: int = 0,
        num_lora_loads: int = 0,
        num_new_shapes: int = 0,
        num_decode_groups: int = 0,
        num_proposals: int = 0,
        num_draft_logits: int = 0,
        num_wakeups: int = 0,
        decode_shared_key_tokens: int = 0,
        num_compiled_rows: int = 0,
    ) -> float:
        """Duration of one step holding prompt chunks (of `num_prefill_seqs` requests) and decodes; or, given an
        array per argument (one entry per step, `shape_columns`), the durations of those steps at once.

        `decode_key_tokens` (0: unknown) defaults to the unpadded keys, `decode_context_tokens`.
        """
        tokens = num_prefill_tokens + num_decodes
        if not _any(tokens):
            return 0.0 * tokens
        attention = 0.0
        if _any(num_prefill_tokens):
            attention += self.prefill_attention_time(num_prefill_tokens, prefill_attended_pairs, prefill_context_tokens)
        if _any(num_decodes):
            keys = decode_key_tokens + (decode_key_tokens == 0) * decode_context_tokens
            attention += self.decode_attention_time(num_decodes, keys, decode_shared_key_tokens)
        weights = self.num_layers * self.layer_gemm_time(tokens) + self.lm_head_time(num_sampling + num_draft_logits)
        return (tokens > 0) * self.time_scale * (
            weights * self._gemv_share(num_compiled_rows)
            + self.num_layers * attention
            + self.communication_time(tokens)
            + self.overhead * self._compiled_share(num_compiled_rows)
            + self.token_overhead * tokens
            + self.sequence_overhead * num_sampling
            + self.chunk_overhead * num_prefill_seqs
            + self.structured_overhead * num_constrained
            + self.lora_time(num_lora_tokens, num_lora_segments, num_lora_loads)
            + self.new_shape_overhead * num_new_shapes
            + self.decode_group_overhead * num_decode_groups
            + self.proposer_overhead * num_proposals
            + self.wakeup_overhead * num_wakeups
        )

    def _compiled_share(self, num_compiled_rows: int | np.ndarray) -> float | np.ndarray:
        """The fixed cost of steps with these compiled rows, as a multiple of an eager step's."""
        return 1.0 + (num_compiled_rows > 0) * (self.compiled_overhead_ratio - 1.0)

    def _gemv_share(self, num_compiled_rows: int | np.ndarray) -> float | np.ndarray:
        """The weight-read time of steps with these compiled rows, as a multiple of the GEMMs' (at one row a
        GEMM is bound by its weight bytes, so all of its time scales with their read speed)."""
        return 1.0 + (num_compiled_rows == 1) * (1.0 / self.gemv_bandwidth_ratio - 1.0)

    def decode_run_offsets(self, num_decodes: int, key_tokens: np.ndarray, num_lora_tokens: int = 0,
                           num_lora_segments: int = 0, num_groups: np.ndarray | float = 0.0,
                           shared_key_tokens: int = 0, num_compiled_rows: np.ndarray | int = 0) -> np.ndarray:
        """End times (from the run's start) of pure decode steps, step j's attention reading `key_tokens[j]` keys
        in `num_groups[j]` decode groups (`num_compiled_rows[j]` rows compiled), `shared_key_tokens` of them in
        every step from blocks another row read.

        Adapter loads are charged by the caller, before the run: its adapters stay resident throughout.
        """
        fixed = (
            (self.num_layers * self.layer_gemm_time(num_decodes) + self.lm_head_time(num_decodes))
            * self._gemv_share(num_compiled_rows)
            + self.communication_time(num_decodes)
            + self.overhead * self._compiled_share(num_compiled_rows)
            + (self.token_overhead + self.sequence_overhead) * num_decodes
            + self.lora_time(num_lora_tokens, num_lora_segments, 0)
        )
        attention = self.num_layers * self.decode_attention_time(num_decodes, key_tokens, shared_key_tokens)
        return self.time_scale * np.cumsum(fixed + attention + self.decode_group_overhead * num_groups)

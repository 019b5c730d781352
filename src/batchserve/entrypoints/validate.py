"""`batchserve validate`: run a workload through the real engine and the simulator, and compare."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..calibration.validate import format_comparison, sim_setup, step_cost_line, validate
from ..config import CacheConfig, SchedulerConfig
from ..engine.llm_engine import LLMEngine
from ..lora import LoRAConfig
from ..lora.random_adapters import write_random_adapters
from ..metrics import SLO
from ..sim.speculation import SpecAcceptance
from ..workload import WorkloadSpec
from .common import DEFAULT_PRESET, Resolved, engine_args, layered_values, lora_config, write_json
from .options import ConfigError, pick


def cmd_validate(args: argparse.Namespace) -> int:
    values = layered_values(args)
    if "hardware" not in values:
        raise ConfigError("validate needs --hardware PROFILE.json, the profile `batchserve calibrate` wrote")
    preset = values.get("scheduler", DEFAULT_PRESET)
    cache = pick(values, CacheConfig)
    spec = WorkloadSpec(**pick(values, WorkloadSpec))  # checked before the model loads; the vocabulary comes later
    lora = lora_config(values)
    if spec.num_adapters and lora.max_cpu_loras is None:  # every adapter stays in host memory: no disk reloads
        lora = LoRAConfig(**{**asdict(lora), "max_cpu_loras": max(spec.num_adapters, lora.max_loras)})
    llm = LLMEngine(args.model, **engine_args(args), skip_tokenizer_init=True, scheduler=preset, **cache,
                    **pick(values, SchedulerConfig), **asdict(lora))
    setup = sim_setup(llm, values["hardware"], args.model, SpecAcceptance(**pick(values, SpecAcceptance)))
    spec = WorkloadSpec(**{**pick(values, WorkloadSpec), "vocab_size": llm.model_config.vocab_size})
    slo = SLO.parse(values["slo"]) if values.get("slo") else None
    run = Resolved(setup, spec, slo, values.get("workload"), preset)
    print(f"{args.model} on {llm.device} vs the simulator on {setup.deployment.hardware.description}; "
          f"{preset} scheduler, max_num_batched_tokens={setup.scheduler.max_num_batched_tokens}, "
          f"KV blocks={setup.cache.num_blocks}")
    with tempfile.TemporaryDirectory() as root:
        if spec.num_adapters:  # a step's cost depends on adapter shapes, not values: random adapters serve
            manager = llm.lora_manager
            for adapter in write_random_adapters(manager.shapes, len(manager.layers), Path(root), spec.num_adapters,
                                                 lora.max_lora_rank):
                manager.add(adapter)
        result = validate(llm, setup, run.requests, slo, quiet=args.quiet)
    print(format_comparison(result.metrics))
    mape = result.per_request_mape
    print(f"per-request MAPE: TTFT {mape['ttft']:.1%}, E2E {mape['e2e']:.1%}")
    print(step_cost_line(result))
    flat = {f"{name}_{k}": v for name, row in result.metrics.items() for k, v in row.items()}
    data = {"config": run.config(), **flat, "metrics": result.metrics, "per_request_mape": mape,
            "step_costs": {label: c.to_dict() for label, c in result.step_costs.items()},
            "measured": result.measured, "predicted": result.predicted}
    if args.json:
        write_json(args.json, data)
    if args.report:
        from ..report import Headline, Report, write_report

        headline = Headline.pick(data, [(f"metrics.{name}.{side}", f"{name}, {side}") for name in result.metrics
                                        for side in ("measured", "predicted")]
                                 + [("per_request_mape.ttft", "per-request TTFT MAPE"),
                                    ("per_request_mape.e2e", "per-request E2E MAPE")])
        versus = [(name, row["predicted"], row["measured"]) for name, row in result.metrics.items()]
        notes = [f"{name} is fixed by the arrivals in an open-loop run: its agreement tests nothing"
                 for name, row in result.metrics.items() if not row["informative"]]
        write_report(Report(f"{args.model}: measured vs predicted on {setup.deployment.hardware.name}", "validate",
                            headline, data["config"], notes=notes,
                            runs={"measured": result.real, "predicted": result.simulated}, versus=versus), args.report)
    if args.plot:
        from ..plots import plot_validation

        plot_validation(result.real, result.simulated, args.plot, title=f"{args.model}: measured vs predicted")
    return 0

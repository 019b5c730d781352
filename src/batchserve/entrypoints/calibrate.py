"""`batchserve calibrate`: measure real steps on this device, fit the cost model, write a hardware profile."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import asdict

from ..calibration.device import WEIGHT_DTYPES, device_name
from ..calibration.steps import calibrate
from ..engine.llm_engine import LLMEngine
from ..tables import render_table
from .common import engine_args, write_json
from .lora_options import lora_engine_args, lora_modules


def cmd_calibrate(args: argparse.Namespace) -> int:
    llm = LLMEngine(args.model, **engine_args(args), max_num_batched_tokens=args.max_num_batched_tokens,
                    max_num_seqs=args.max_num_seqs, skip_tokenizer_init=True, **lora_engine_args(args))
    name = args.name or f"calibrated-{llm.device.type}"
    t = time.perf_counter()
    result = calibrate(llm, name, quiet=args.quiet, adapters=lora_modules(args), max_context=args.max_context,
                       grid_passes=args.grid_passes)
    wall = time.perf_counter() - t
    meta = {
        "model": args.model, "dtype": WEIGHT_DTYPES[llm.model.dtype], "quantization": llm.quantization_config.method,
        "device": device_name(llm.device), "date": str(datetime.date.today()), "wall_s": wall,
        "max_num_batched_tokens": args.max_num_batched_tokens, "max_num_seqs": args.max_num_seqs,
        "max_context": args.max_context, "enforce_eager": args.enforce_eager,
    }
    write_json(args.output, result.profile_dict(meta))
    if args.observations:
        with open(args.observations, "w") as f:
            for o in result.observations:
                f.write(json.dumps(o.to_dict()) + "\n")
    hw = result.profile
    peak = next(iter(hw.peak_flops.values()))
    print(f"{hw.description}: matmul {peak / 1e9:.0f} GFLOP/s, memory {hw.memory_bandwidth / 1e9:.1f} GB/s")
    print("fitted: " + ", ".join(f"{k}={v:.3g}" for k, v in asdict(result.efficiency).items()))
    rows = [[kind, str(r["steps"]), f"{r['mape']:.1%}", f"{r['max_abs_error']:.1%}", f"{r['total_time_error']:+.1%}"]
            for kind, r in result.report.items()]
    print(render_table(rows, (">14", ">6", ">7", ">7", ">7"), ["steps", "count", "MAPE", "worst", "total"]))
    print(f"wrote {args.output} in {wall:.0f} s; use it as --hardware {args.output}")
    return 0

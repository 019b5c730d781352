"""`batchserve calibrate`: measure real steps on this device, fit the cost model, write a hardware profile.

The grid covers what a serving step can be: prompt chunks of several sizes
with and without cached context, decode batches of several sizes at several
contexts, and steps mixing both. Long contexts come cheaply from the prefix
cache (a shared prefix is computed once, then many requests decode on top of
it), so the whole grid runs in about a minute on a 2-core CPU for a 0.5B model.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..engine import Engine
from ..executors.sim import step_shape
from ..llm_engine import LLMEngine
from ..models.linear import PackedLinear
from ..request import Request, SamplingParams
from ..sim.calibration import Observation, fit_efficiency, fit_report
from ..sim.cost_model import Efficiency
from ..sim.deployment import Deployment
from ..sim.hardware import HARDWARE, Hardware
from .common import write_json
from .progress import Progress

_ids = itertools.count()
WEIGHT_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ---- the device ---------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(device: torch.device, dtype: torch.dtype, packed: bool = False) -> float:
    """Best-of-5 FLOP/s of large square products: torch.mm, or against a oneDNN-packed weight
    (`packed`), the GEMM the CPU engine's linear layers run (models/linear.py)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    product = PackedLinear(b, None) if packed else (lambda x: x @ b)
    return 2 * n**3 / _best_time(lambda: product(a), device, repeat=5)


def measure_peaks(device: torch.device, dtype: torch.dtype, packed: bool = False) -> tuple[float, float]:
    """(matmul FLOP/s, memory bytes/s): best of several large square products and large copies."""
    flops = matmul_flops(device, dtype, packed)
    numel = (1 << 30 if device.type == "cuda" else 1 << 26) // 4
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _best_time(lambda: dst.copy_(src), device, repeat=5)  # read + write
    return flops, bandwidth


def device_memory_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    raise OSError("cannot read the memory size from /proc/meminfo")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or "CPU")
    return f"{model} ({torch.get_num_threads()} threads)"


def _catalog_match(name: str) -> Hardware | None:
    """The catalog entry of a recognised GPU, for the figures a single device cannot measure (its links)."""
    key = name.lower()
    for hw in HARDWARE.values():
        words = hw.description.lower().replace("nvidia ", "").replace("amd ", "").split()
        if words and words[0] in key and hw.name.split("-")[0] in key:
            return hw
    return None


# ---- the grid -----------------------------------------------------------------------


def _prompt(rng: np.random.Generator, vocab: int, n: int) -> list[int]:
    return rng.integers(0, vocab, n).tolist()


Entry = tuple[list[int], int, int]  # prompt, output length, the step it arrives at


def calibration_phases(max_model_len: int, vocab: int, max_tokens_per_step: int, max_seqs: int,
                       seed: int = 0) -> Iterator[tuple[str, list[Entry]]]:
    """(label, requests) groups; each group runs to completion before the next.

    Requests of a group that share a prefix reuse it from the prefix cache, which
    is what makes long-context decode points cheap; late arrivals make mixed steps.
    """
    rng = np.random.default_rng(seed)
    longest = min(2048, max_model_len - 320)  # room for a 256-token chunk and outputs on top
    # Page in the weights and build the kernels of every step kind once, unrecorded.
    yield "warm-up", [(_prompt(rng, vocab, 256), 4, 0)] + [(_prompt(rng, vocab, 16), 4, 1) for _ in range(8)]
    for n in (16, 64, 256):
        yield f"prefill {n}", [(_prompt(rng, vocab, n), 1, 0)]
    for context in (512, longest):
        prefix = _prompt(rng, vocab, context)
        yield f"prefix {context}", [(prefix, 1, 0)]
        for n in (32, 256):
            yield f"chunk {n} at context {context}", [(prefix + _prompt(rng, vocab, n), 1, 0)]
        for batch in (1, 4, 16, 64):
            if batch <= max_seqs:
                yield f"decode x{batch} at context {context}", [
                    (prefix + _prompt(rng, vocab, 8), 4, 0) for _ in range(batch)
                ]
    for batch in (1, 8, 32, 128):
        if batch <= max_seqs:
            yield f"decode x{batch} short", [(_prompt(rng, vocab, 16), 5, 0) for _ in range(batch)]
    chunk = min(512, max_tokens_per_step // 2, longest)
    decoders = [(_prompt(rng, vocab, 32), 16, 0) for _ in range(min(16, max_seqs - 1))]
    yield "mixed", decoders + [(_prompt(rng, vocab, chunk), 1, step) for step in (3, 6, 9, 12)]
    # Serving-like steps: a stream of arrivals sharing a system prompt, so decode batches grow
    # while new prompts' chunks join them.
    system = _prompt(rng, vocab, 128)
    yield "steady", [(system + _prompt(rng, vocab, 32), 12, i // 6) for i in range(min(64, max_seqs))]


def record_steps(engine: Engine, entries: list[Entry], keep: bool = True) -> list[Observation]:
    """Run requests to completion, adding each at its step; each step's shape and wall time (scheduling included)."""
    arrivals = sorted(((start, i) for i, (_, _, start) in enumerate(entries)), reverse=True)
    observations = []
    step = 0
    while arrivals or engine.has_unfinished():
        while arrivals and arrivals[-1][0] <= step:
            prompt, out, _ = entries[arrivals.pop()[1]]
            engine.add_request(Request(f"calibrate-{next(_ids)}", prompt,
                                       SamplingParams(max_tokens=out, ignore_eos=True)))
        t = time.perf_counter()
        engine.step()
        seconds = time.perf_counter() - t
        if keep and engine.last_batch is not None:
            observations.append(Observation(step_shape(engine.last_batch), seconds))
        step += 1
    return observations


@dataclass
class Calibration:
    profile: Hardware
    deployment: Deployment
    efficiency: Efficiency
    observations: list[Observation]
    report: dict

    def profile_dict(self, meta: dict) -> dict:
        return {**self.profile.to_dict(), "_calibration": {**meta, "fit": self.report}}


def calibrate(llm: LLMEngine, name: str, quiet: bool = False) -> Calibration:
    """Measure peaks and the step grid on `llm`'s device, then fit the cost model to the steps."""
    device = llm.device
    dtype = llm.model.dtype
    # the peak of the GEMM the engine runs, so fitted efficiencies stay fractions of it
    flops, bandwidth = measure_peaks(device, dtype, packed=llm.model.prepacked)
    label = device_name(device)
    match = _catalog_match(label) if device.type == "cuda" else None
    weight_dtype = WEIGHT_DTYPES[dtype]
    peak = {weight_dtype: flops}
    profile = Hardware(
        name=name, description=f"{label}, calibrated {datetime.date.today()}",
        peak_flops=peak, memory_bandwidth=bandwidth, memory_bytes=device_memory_bytes(device),
        interconnect_bandwidth=match.interconnect_bandwidth if match else bandwidth / 10,
        interconnect_latency_s=match.interconnect_latency_s if match else 5e-6,
        max_gpus_per_node=match.max_gpus_per_node if match else 1,
    )
    deployment = Deployment(replace(llm.model_config, name="calibrated"), profile, weight_dtype=weight_dtype)
    sched = llm.scheduler.config
    phases = list(calibration_phases(llm.model_config.max_model_len, llm.model_config.vocab_size,
                                     sched.max_num_batched_tokens, sched.max_num_seqs))
    observations: list[Observation] = []
    with Progress("calibrating", len(phases), enabled=not quiet, unit="phases") as progress:
        for i, (phase, entries) in enumerate(phases):
            observations += record_steps(llm.engine, entries, keep=phase != "warm-up")
            progress.update(i + 1, f"{phase}, {len(observations)} steps")
    efficiency = fit_efficiency(deployment, observations)
    profile = replace(profile, efficiency=asdict(efficiency))
    deployment = replace(deployment, hardware=profile)
    return Calibration(profile, deployment, efficiency, observations, fit_report(deployment, efficiency, observations))


# ---- the command --------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    llm = LLMEngine(args.model, device=args.device, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
                    max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                    skip_tokenizer_init=True)
    name = args.name or f"calibrated-{llm.device.type}"
    t = time.perf_counter()
    result = calibrate(llm, name, quiet=args.quiet)
    wall = time.perf_counter() - t
    meta = {
        "model": args.model, "dtype": WEIGHT_DTYPES[llm.model.dtype],
        "device": device_name(llm.device), "date": str(datetime.date.today()), "wall_s": wall,
        "max_num_batched_tokens": args.max_num_batched_tokens, "max_num_seqs": args.max_num_seqs,
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
    print(f"{'steps':>14} {'count':>6} {'MAPE':>7} {'worst':>7} {'total':>7}")
    for kind, r in result.report.items():
        print(f"{kind:>14} {r['steps']:>6} {r['mape']:>7.1%} {r['max_abs_error']:>7.1%} {r['total_time_error']:>+7.1%}")
    print(f"wrote {args.output} in {wall:.0f} s; use it as --hardware {args.output}")
    return 0



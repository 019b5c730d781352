"""Simulator speed: requests simulated per wall second, near saturation.

Runs Llama-3.1-8B on one H100 (sarathi, 512-token budget) at a rate just under
its saturation, with the lazy decode cohort and fast-forward (what `simulate`
uses) and, as the baseline measured in the same run, the eager path (every
running request handled every step, as the real engine does). Both paths give
identical results; the bench checks that too.

    python bench/bench_simulate.py                 # 10k requests, both paths, 3 repeats
    python bench/bench_simulate.py --large         # also 100k requests (lazy path)

Wall times on shared machines swing between runs; the bench reports the
minimum and median of `--repeat` runs, and CPU seconds beside wall seconds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import time

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.batch import ScheduledBatch, StepResult
from batchserve.core.scheduler import Scheduler
from batchserve.engine import Engine, StepOutput
from batchserve.sim.cluster import Cluster, SimResult
from batchserve.sim.cost_model import CostModel
from batchserve.sim.engine import SimEngine
from batchserve.sim.executor import SimExecutor, step_shape
from batchserve.sim.scheduler import SimScheduler
from batchserve.sim.simulate import ClusterConfig, resolve
from batchserve.workload import WorkloadSpec, synthetic_requests


class EagerExecutor:
    """The baseline's executor: the cost model's time for one step of a core ScheduledBatch."""

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model

    def execute(self, batch: ScheduledBatch) -> StepResult:
        return StepResult(self.cost_model.step_time(*step_shape(batch)))


class EagerEngine(Engine):
    """The baseline replica: the core Engine, every running request scheduled every step; nothing to fast-forward."""

    def __init__(self, scheduler: Scheduler, executor: EagerExecutor) -> None:
        super().__init__(scheduler, executor)
        self.num_iterations = 0

    def step(self, until: float = float("inf")) -> StepOutput:
        out = super().step()
        self.num_iterations += out.result is not None
        return out


def run(num_requests: int, rate: float, lazy: bool) -> SimResult:
    setup = resolve(ClusterConfig(model="llama-3.1-8b", hardware="h100-sxm"), scheduler_config("sarathi"), CacheConfig())
    cost_model = CostModel(setup.deployment, setup.efficiency)
    max_model_len = setup.deployment.model.max_model_len
    if lazy:
        engine = SimEngine(SimScheduler(setup.scheduler, setup.cache, max_model_len), SimExecutor(cost_model))
    else:
        engine = EagerEngine(Scheduler(setup.scheduler, setup.cache, max_model_len), EagerExecutor(cost_model))
    spec = WorkloadSpec(num_requests=num_requests, rate=rate, vocab_size=setup.deployment.model.vocab_size, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    result = Cluster([engine]).run(synthetic_requests(spec))
    result.wall_s = time.perf_counter() - t0  # include workload generation
    result.cpu_s = time.process_time() - c0
    return result


def timed(num_requests: int, rate: float, lazy: bool, repeat: int) -> tuple[SimResult, list[float], list[float]]:
    runs = [run(num_requests, rate, lazy) for _ in range(repeat)]
    return runs[0], sorted(r.wall_s for r in runs), sorted(r.cpu_s for r in runs)


def same_results(a: SimResult, b: SimResult, tol: float = 1e-9) -> bool:
    """Same requests, token counts and times (up to float summation order of fast-forwarded runs)."""
    ra = sorted(a.records, key=lambda r: r.request_id)
    rb = sorted(b.records, key=lambda r: r.request_id)
    return len(ra) == len(rb) and all(
        x.request_id == y.request_id
        and x.num_output_tokens == y.num_output_tokens
        and abs(x.first_token_time - y.first_token_time) <= tol * max(1.0, y.first_token_time)
        and abs(x.finish_time - y.finish_time) <= tol * max(1.0, y.finish_time)
        for x, y in zip(ra, rb)
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=35.0, help="req/s; saturation is about 37 req/s")
    parser.add_argument("--large", action="store_true", help="also simulate 100,000 requests")
    parser.add_argument("--repeat", type=int, default=3, help="runs per 10k measurement")
    args = parser.parse_args()
    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, cpu {cpu_model()}, python {platform.python_version()}")
    lazy, lazy_wall, lazy_cpu = timed(10_000, args.rate, True, args.repeat)
    eager, eager_wall, eager_cpu = timed(10_000, args.rate, False, args.repeat)
    same = same_results(lazy, eager)
    throughput = len(lazy.records) / lazy.simulated_s
    print(f"workload: 10,000 requests at {args.rate} req/s; simulated throughput {throughput:.1f} req/s")
    for name, r, wall, cpu in (("lazy + fast-forward", lazy, lazy_wall, lazy_cpu),
                               ("eager baseline", eager, eager_wall, eager_cpu)):
        print(
            f"  {name:<20} wall min {wall[0]:5.2f} s, median {statistics.median(wall):5.2f} s; "
            f"cpu min {cpu[0]:5.2f} s; {len(r.records) / wall[0]:6.0f} requests/s; "
            f"{r.num_steps} steps in {r.num_iterations} iterations"
        )
    print(f"  speedup over eager (min wall): {eager_wall[0] / lazy_wall[0]:.2f}x; identical results: {same}")
    if args.large:
        big, wall, cpu = timed(100_000, args.rate, True, 1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"100,000 requests: wall {wall[0]:.2f} s, cpu {cpu[0]:.2f} s, {len(big.records) / wall[0]:.0f} requests/s, "
            f"peak RSS {rss:.0f} MiB (10k runs included)"
        )


if __name__ == "__main__":
    main()

"""Run a bench script on this thread's CPU time instead of the wall clock: timings that a loaded machine spares.

    python bench/cpu_clock.py bench/bench_step_residuals.py --model tiny --num-requests 120 --rate 4
    python bench/cpu_clock.py bench/bench_estimate.py --num-requests 40

torch runs on 1 thread (its kernels then run in this thread), `time.perf_counter`
reads the thread's CPU time and `time.sleep` only advances that clock, so other
processes' load does not stretch any measured step. What it measures is a
1-thread machine's compute, not an idle wall clock: use it to compare measured
with predicted in one process (calibrate and validate see the same clock), never
to quote speeds. Cache sharing with other processes still slows it a little.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch


class CpuClock:
    """This thread's CPU seconds plus the seconds slept on it."""

    def __init__(self) -> None:
        self.slept = 0.0

    def now(self) -> float:
        return time.thread_time() + self.slept

    def sleep(self, seconds: float) -> None:
        self.slept += max(0.0, seconds)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/cpu_clock.py SCRIPT [ARGS...]")
    torch.set_num_threads(1)
    clock = CpuClock()
    time.perf_counter, time.sleep = clock.now, clock.sleep
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

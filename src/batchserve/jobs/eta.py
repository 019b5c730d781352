"""The live ETA of a running job: its twin re-simulates what is left with what the run has measured so far.

A rate extrapolation is wrong whenever the rest of the job differs from its
start (longer prompts last, shared prefixes already cached, a tail of a few
long outputs); the twin knows the remaining requests. Every `eta_every`
completions (as long as re-simulating stays a small share of the run) it
simulates the unfinished ones with output lengths learned from the finished
ones and the step-cost scale of the steps run so far; between
re-simulations the ETA counts down. Requests in flight restart in
the twin, so the ETA leans high by their progress.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..sim.router import RouterConfig
from ..sim.simulate import SimSetup
from .batch_io import BatchRequest, Entry
from .estimate import EstimateConfig, Evidence, JobPlan
from .measurements import Measurements, StepLog
from .runner import JobConfig


class LiveEta:
    """Seconds left in a job, re-simulated every `est.eta_every` completions."""

    def __init__(self, job: JobPlan, sim: SimSetup, config: JobConfig, router: RouterConfig, est: EstimateConfig,
                 log: StepLog, prior: Sequence[Measurements] = ()) -> None:
        self.job, self.sim, self.config, self.router, self.est = job, sim, config, router, est
        self.log = log
        self.prior = list(prior)
        self.pending = {r.custom_id: r for r in job.requests}
        self._done = 0
        self._since = 0
        self._left: float | None = None
        self._at = 0.0
        self._spent = 0.0  # seconds spent re-simulating

    def finished(self, entry: Entry) -> None:
        if isinstance(entry, BatchRequest) and self.pending.pop(entry.custom_id, None) is not None:
            self._done += 1
            self._since += 1

    def seconds_left(self, elapsed: float) -> float:
        """The ETA at `elapsed` seconds into the run."""
        affordable = self._spent <= self.est.eta_max_overhead * elapsed
        if self._left is None or (self._since >= self.est.eta_every and affordable):
            self._since = 0
            t = time.perf_counter()
            self._left, self._at = self._simulate(elapsed), elapsed
            self._spent += time.perf_counter() - t
        return max(0.0, self._left - (elapsed - self._at))

    def _simulate(self, elapsed: float) -> float:
        if not self.pending:
            return 0.0
        now = replace(self.log.record, wall_s=elapsed, num_requests=self._done)
        records = [*self.prior, now]
        # the run is this machine: its own steps always count, earlier ones if measured on the same device and dtype
        steps_from = [m for m in records if m.steps and (m.device, m.dtype) == (now.device, now.dtype)]
        evidence = Evidence.of(self.sim, records, steps_from, self.job, self.est)
        remaining = list(self.pending.values())
        lengths = None
        if evidence.lengths is not None:
            lengths = evidence.lengths_for(remaining, np.random.default_rng(self.config.seed),
                                           evidence.lengths.expected())
        return evidence.simulate(remaining, self.sim, self.config, self.router, lengths).wall_s

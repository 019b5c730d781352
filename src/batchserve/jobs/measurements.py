"""What a real job measured, kept for the next estimate: each step's shape and time, each completion's length.

A run (`run --json`) or an estimate's sample records them; `--profile-from`
reads them back. Step times only describe the device and dtype they ran on,
so a record names both and is refused for another. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..attention_layout import AttentionConfig
from ..engine import StepOutput
from ..gemm_shapes import RUN_IN_THIS_PROCESS
from ..outputs import RequestOutput
from ..sim.calibration import Observation, predict
from ..sim.cost_model import Efficiency
from ..sim.deployment import Deployment
from ..sim.executor import step_shape
from ..sim.hardware import Hardware
from .batch_io import BatchRequest
from .lengths import Completion

_CALIBRATED = ", calibrated "  # how `calibrate` ends a profile's description, before the date


def device_label(hardware: Hardware) -> str:
    """The device a profile describes: a calibrated profile's measured device, else the catalog description."""
    return hardware.description.split(_CALIBRATED, 1)[0]


@dataclass
class Measurements:
    """Steps and completions measured on one device in one dtype."""

    device: str
    dtype: str
    steps: list[Observation] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    wall_s: float = 0.0
    """The job loop's wall time over these steps (steps plus planning, admission and writing)."""
    num_requests: int = 0
    attention_backend: str | None = None
    """The engine's attention backend, whose K/V costs the steps carry; None: a record from before it was kept."""

    @property
    def loop_overhead_s(self) -> float:
        """Wall time per request outside the model steps: tokenizing, admitting, formatting and writing results."""
        steps = sum(o.seconds for o in self.steps)
        return max(0.0, self.wall_s - steps) / self.num_requests if self.num_requests else 0.0

    def merged(self, other: Measurements) -> Measurements:
        """Both records as one (same device and dtype)."""
        return replace(self, steps=self.steps + other.steps, completions=self.completions + other.completions,
                       wall_s=self.wall_s + other.wall_s, num_requests=self.num_requests + other.num_requests)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "attention_backend": self.attention_backend,
                "wall_s": self.wall_s, "num_requests": self.num_requests,
                "steps": [o.to_dict() for o in self.steps],
                "completions": [c.to_list() for c in self.completions]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurements:
        return cls(str(d["device"]), str(d["dtype"]), [Observation.from_dict(o) for o in d["steps"]],
                   [Completion.from_list(c) for c in d["completions"]], float(d["wall_s"]), int(d["num_requests"]),
                   d.get("attention_backend"))

    @classmethod
    def load(cls, path: str) -> Measurements:
        """The measurements of a `run --json` (or an estimate's) file; a clear error if it holds none."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return cls.from_dict(data["measurements"])
        except FileNotFoundError:
            raise ValueError(f"--profile-from {path}: no such file") from None
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"--profile-from {path}: not a `run --json` file with measurements ({err!r})") from None

    def check_target(self, device: str, dtype: str, attention_backend: str, source: str) -> None:
        """Refuse step costs of another device, dtype or attention backend than the one the estimate is for."""
        if (self.device, self.dtype) != (device, dtype):
            raise ValueError(f"{source} was measured on {self.device!r} in {self.dtype}; this estimate is for "
                             f"{device!r} in {dtype}: profile the job on that device and dtype")
        if self.attention_backend not in (None, attention_backend):
            raise ValueError(f"{source} was measured with the {self.attention_backend} attention backend; this "
                             f"estimate is for {attention_backend}: profile the job with it, or give "
                             f"--attention-backend {self.attention_backend}")


def fit_step_costs(deployment: Deployment, efficiency: Efficiency, steps: Sequence[Observation]) -> Efficiency:
    """The profile's efficiency with a time scale and an added cost per sampled sequence fitted (least squares,
    both >= 0) to measured steps: the machine's state now, and per-request sampler work (seeded generators,
    logit biases) that grows with the batch, which a scale alone cannot follow. Unchanged with no steps."""
    if not steps:
        return efficiency
    base = predict(deployment, replace(efficiency, time_scale=1.0), steps)
    rows = np.array([o.shape.num_sampling for o in steps], dtype=np.float64)
    measured = np.array([o.seconds for o in steps])
    scale, per_seq = np.linalg.lstsq(np.column_stack([base, rows]), measured, rcond=None)[0]
    if scale <= 0 or per_seq < 0:
        # a bound is active: the scale alone. A per-sequence cost alone would drop the profile's shape and price
        # every wider batch by its rows (a sample's 3-8-row steps put 5.5 ms on each row of the job's 64-row
        # steps, and a chat job's estimate at 2.6x its run)
        scale, per_seq = measured @ base / (base @ base), 0.0
    scale, per_seq = float(scale), float(per_seq)
    return replace(efficiency, time_scale=scale, sequence_overhead_s=efficiency.sequence_overhead_s + per_seq / scale)


class StepLog:
    """Records a real engine's steps (shape and wall time, scheduling and output processing included)
    and its finished completions, as `Measurements`."""

    def __init__(self, device: str, dtype: str, attention: AttentionConfig) -> None:
        self.record = Measurements(device, dtype, attention_backend=attention.backend)
        self.attention = attention
        # the counts whose kernels the process holds (an estimate's sample ran before): a new one's first step pays more
        self.seen = RUN_IN_THIS_PROCESS.copy()
        self._batch: StepOutput | None = None

    def observe(self, step: StepOutput) -> None:
        """The engine's step observer: remember the batch until its wall time is known."""
        self._batch = step

    def timed(self, seconds: float, overlapped: bool = False) -> None:
        """The wall time of the step just observed (a step that scheduled nothing is not recorded); `overlapped`:
        the engine overlaps steps (async scheduling), so the step's own span, launch to result, is its time."""
        if self._batch is not None:
            step = self._batch
            seconds = step.result.duration if overlapped else seconds
            self.record.steps.append(Observation(step_shape(step.batch, self.attention, seen=self.seen), seconds))
        self._batch = None

    def take(self) -> Measurements:
        """What was recorded so far; recording goes on into a fresh record."""
        record, self.record = self.record, replace(self.record, steps=[], completions=[], wall_s=0.0, num_requests=0)
        return record

    def finished(self, req: BatchRequest, out: RequestOutput) -> None:
        assert req.params is not None
        for c in out.outputs:
            self.record.completions.append(Completion(len(req.prompt_token_ids), req.params.max_tokens,
                                                      len(c.token_ids), c.finish_reason == "length", req.custom_id))

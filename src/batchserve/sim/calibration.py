"""Fit the cost model's efficiency factors to measured step times.

`calibrate` runs real steps on a device and records each step's shape and
duration; this module finds the `Efficiency` under which the roofline predicts
those durations best, and reports the fit's error per step kind. Errors are
compared as log ratios (a 1 ms decode step counts as much as a 1 s prefill)
under a Cauchy loss, so the few steps a shared machine slows down threefold
(another process, a first touch of the weights) do not drag the fit.
Torch-free: observations can come from any engine, or a file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .cost_model import CostModel, Efficiency, StepShape, shape_columns
from .deployment import Deployment

# Fitted fields: fractions of peak in (0, 1], ratios > 0, overheads >= 0.
FRACTIONS = ("gemm_flops", "attention_flops", "memory_bandwidth", "lora_flops", "expert_flops", "kv_spill_bandwidth")
RATIOS = ("kv_bandwidth_ratio", "kv_shared_bandwidth_ratio", "compiled_overhead_ratio", "gemv_bandwidth_ratio")
OVERHEADS = ("step_overhead_s", "token_overhead_s", "sequence_overhead_s", "chunk_overhead_s", "structured_overhead_s",
             "lora_segment_overhead_s", "dequant_overhead_s", "new_shape_overhead_s", "decode_group_overhead_s",
             "proposer_overhead_s", "wakeup_overhead_s")
# Terms that act only on some steps, and what says a step has them: a StepShape field that is nonzero, or a test.
CONDITIONAL: dict[str, str | Callable[[StepShape], bool]] = {
    "structured_overhead_s": "num_constrained", "lora_flops": "num_lora_segments",
    "lora_segment_overhead_s": "num_lora_segments", "new_shape_overhead_s": "num_new_shapes",
    "decode_group_overhead_s": "num_decode_groups", "proposer_overhead_s": "num_proposals",
    "wakeup_overhead_s": "num_wakeups", "kv_shared_bandwidth_ratio": "decode_shared_key_tokens",
    "compiled_overhead_ratio": "num_compiled_rows", "gemv_bandwidth_ratio": lambda s: s.num_compiled_rows == 1}
QUANTIZED = ("dequant_overhead_s",)
"""Terms only a quantized deployment's steps have (all of its steps, none of another's)."""
_TINY = 1e-9  # the smallest overhead the fit distinguishes from zero
_RATIO_RANGE = 5.0  # a fitted ratio stays within exp(+-this)
_RATIO_FLOORS = {"kv_shared_bandwidth_ratio": 1.0}
"""Ratios with a physical floor: a key another row of the step read first is in the caches, never slower than one
read from memory; free below it, the term only absorbs other misfits (0.88 in one SmolLM2 fit)."""
_GATHER_START_RATIO = 0.1  # the second start's kv_bandwidth_ratio: SmolLM2's K/V gather on a CPU fitted ~0.1
_SCALE = 0.2  # log-ratio errors well under this count quadratically, far larger ones only logarithmically


@dataclass(frozen=True)
class Observation:
    """One measured step."""

    shape: StepShape
    seconds: float

    @property
    def kind(self) -> str:
        s = self.shape
        if s.num_prefill_tokens and s.num_decodes:
            return "mixed"
        return "prefill" if s.num_prefill_tokens else "decode"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seconds": self.seconds, **self.shape._asdict()}

    @classmethod
    def from_dict(cls, d: dict) -> Observation:
        return cls(StepShape(**{f: d[f] for f in StepShape._fields if f in d}), float(d["seconds"]))


def median_per_point(passes: Sequence[Sequence[Sequence[Observation]]]) -> list[Observation]:
    """One observation per grid point: the median time of the steps that repeated passes of a calibration grid
    measured at the same point (pass -> phase -> steps; a point is a phase's i-th step of one shape).

    A shared machine's speed drifts by 2x between minutes; a grid measured once samples each point at one
    minute, so drift biases some points against others and the fit follows it. Passes run one after another
    (the whole grid, then again) sample every point at several minutes, and the median keeps one slow minute
    out. A step whose shape differs between passes (a token count new to the first pass only) is its own point.
    """
    points: dict[tuple[int, int, StepShape], list[float]] = {}
    for phases in passes:
        for p, steps in enumerate(phases):
            for i, o in enumerate(steps):
                points.setdefault((p, i, o.shape), []).append(o.seconds)
    return [Observation(shape, float(np.median(seconds))) for (_, _, shape), seconds in points.items()]


def predict(deployment: Deployment, efficiency: Efficiency, observations: Sequence[Observation]) -> np.ndarray:
    return _priced(deployment, efficiency, shape_columns([o.shape for o in observations]))


def _priced(deployment: Deployment, efficiency: Efficiency, columns: tuple[np.ndarray, ...]) -> np.ndarray:
    """The steps' predicted durations, from their `shape_columns`."""
    return CostModel(deployment, efficiency).step_time(*columns)


def fitted_fields(observations: Sequence[Observation], moe: bool = False, quantized: bool = False,
                  spills: bool = False) -> tuple[str, ...]:
    """The fields these steps can pin down: a term that acts only on some steps (a grammar's rows, adapter
    segments) only when some step has it, the expert term only on an MoE model, the dequantization term
    only on a quantized one and the K/V spill rate only when some step's gathered K/V `spills` past the cache
    (without them it has no effect on the loss, and the fit would leave it anywhere)."""
    present = {name for name, has in CONDITIONAL.items()
               if any((has(o.shape) if callable(has) else getattr(o.shape, has)) for o in observations)}
    return tuple(n for n in FRACTIONS + RATIOS + OVERHEADS if (n not in CONDITIONAL or n in present)
                 and (moe or n != "expert_flops") and (quantized or n not in QUANTIZED)
                 and (spills or n != "kv_spill_bandwidth"))


def spills(deployment: Deployment, observations: Sequence[Observation]) -> bool:
    """Whether some step's gathered decode K/V (a layer's) outgrows the device's last-level cache."""
    model = CostModel(deployment)
    return any(o.shape.num_decodes and model.kv_spill_time(o.shape.decode_key_tokens or o.shape.decode_context_tokens)
               for o in observations)


def _decode(x: np.ndarray, base: Efficiency, names: Sequence[str]) -> Efficiency:
    values = {}
    for name, v in zip(names, x):
        if name in RATIOS:
            values[name] = max(_RATIO_FLOORS.get(name, 0.0), float(np.exp(np.clip(v, -_RATIO_RANGE, _RATIO_RANGE))))
            continue
        v = np.clip(v, np.log(_TINY) - 1, 2.0)
        values[name] = float(min(1.0, np.exp(v))) if name in FRACTIONS else float(np.exp(v)) if v > np.log(_TINY) else 0.0
    return replace(base, **values)


def _encode(eff: Efficiency, names: Sequence[str]) -> np.ndarray:
    return np.log([max(getattr(eff, n), _TINY) for n in names])


def fit_efficiency(
    deployment: Deployment, observations: Sequence[Observation], start: Efficiency = Efficiency()
) -> Efficiency:
    """The efficiency minimising the robust (Cauchy) loss of log(predicted / measured) step durations."""
    names = fitted_fields(observations, moe=deployment.model.is_moe, quantized=deployment.quantization is not None,
                          spills=spills(deployment, observations))
    new_shape = new_shape_overhead(observations) if "new_shape_overhead_s" in names else None
    if new_shape is not None:  # measured apart, from twins: the joint fit cannot see it (below)
        names = tuple(n for n in names if n != "new_shape_overhead_s")
        start = replace(start, new_shape_overhead_s=new_shape)
    if len(observations) < len(names):
        raise ValueError(f"need at least {len(names)} measured steps to fit, got {len(observations)}")
    measured = np.log([o.seconds for o in observations])
    columns = shape_columns([o.shape for o in observations])

    def loss(x: np.ndarray) -> float:
        predicted = _priced(deployment, _decode(x, start, names), columns)
        return float(np.mean(np.log1p(((np.log(predicted) - measured) / _SCALE) ** 2)))

    # Start from the defaults, but with overheads of the size the data suggests; and once more with K/V read
    # as a CPU's gather reads it: from in-place reads the fit can slide into pricing decode keys by attention
    # FLOPs instead (a local minimum the prompt steps' attention then pays for).
    x0 = replace(start, step_overhead_s=float(np.min([o.seconds for o in observations])) / 4,
                 token_overhead_s=1e-6, structured_overhead_s=1e-5, lora_segment_overhead_s=1e-4,
                 dequant_overhead_s=1e-4, decode_group_overhead_s=1e-4, proposer_overhead_s=1e-5,
                 wakeup_overhead_s=1e-4, new_shape_overhead_s=1e-4 if new_shape is None else new_shape,
                 kv_spill_bandwidth=0.3)
    starts = [x0, replace(x0, kv_bandwidth_ratio=_GATHER_START_RATIO)]
    best = min((_descend(loss, _encode(s, names)) for s in starts), key=loss)
    fitted = _decode(best, start, names)
    # a dense model's steps cannot see the expert term: its profile prices experts as its other GEMMs
    return fitted if "expert_flops" in names else replace(fitted, expert_flops=fitted.gemm_flops)


_TWIN_KEYS_TOLERANCE = 0.05
"""A new-count step's twin may read up to this fraction more decode keys (its decodes a step further on)."""
MIN_NEW_SHAPE_TWINS = 3
"""Fewer steps of new token counts with twins than this, and the joint fit prices `new_shape_overhead_s`."""


def new_shape_overhead(observations: Sequence[Observation]) -> float | None:
    """`new_shape_overhead_s` from twins: the median of each new-token-count step's time minus the median of its
    twins' (steps of the same shape run once the count was known: a prompt of the same length, or the same decode
    batch a step later); None with fewer than `MIN_NEW_SHAPE_TWINS` such steps.

    Measured apart, as an additive term from pairs (like the LoRA terms): a new count's step is measured once
    (later passes know the count), so in the joint fit's robust loss it weighs as one outlier among its twins, and
    the other terms' compromise over the grid moves it. On `tiny`, twins measure 4.6-5.7 ms for prompts and 3-4 ms
    for a decode batch's first step; joint fits in three processes gave 2.9, 3.5 and 5.7 ms.
    """
    def key(shape: StepShape) -> StepShape:
        return shape._replace(decode_context_tokens=0, decode_key_tokens=0, decode_shared_key_tokens=0, num_new_shapes=0,
                              num_wakeups=0)

    known: dict[StepShape, list[Observation]] = {}  # steps whose count was known, by their shape but for contexts
    for o in observations:
        if not o.shape.num_new_shapes and not o.shape.num_wakeups:
            known.setdefault(key(o.shape), []).append(o)
    differences = []
    for o in observations:
        if not o.shape.num_new_shapes or o.shape.num_wakeups:
            continue
        keys = o.shape.decode_key_tokens
        twins = [t.seconds for t in known.get(key(o.shape), ())
                 if abs(t.shape.decode_key_tokens - keys) <= _TWIN_KEYS_TOLERANCE * keys]
        if twins:
            differences.append(o.seconds - float(np.median(twins)))
    if len(differences) < MIN_NEW_SHAPE_TWINS:
        return None
    return max(0.0, float(np.median(differences)))


def _descend(loss: Callable[[np.ndarray], float], x: np.ndarray) -> np.ndarray:
    """Nelder-Mead from x, restarted from the best point with a fresh simplex while it improves (NM stalls in
    7+ dimensions)."""
    for _ in range(6):
        previous = loss(x)
        x = nelder_mead(loss, x, step=0.5)
        if previous - loss(x) < 1e-6:
            break
    return x


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 1.0, iters: int = 1000,
                tol: float = 1e-10) -> np.ndarray:
    """Minimise f from x0 with the Nelder-Mead simplex (no gradients: the roofline's max() has kinks)."""
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2 * (centroid - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best point
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


LORA_TERMS = ("lora_flops", "lora_segment_overhead_s")
_LORA_SHAPE_FIELDS = ("num_lora_tokens", "num_lora_segments", "num_lora_loads", "num_new_shapes")
"""The fields in which a step under adapters may differ from its base twin."""
_PAIR_SCALE = 0.05  # a pair's error, relative to its base step, counts quadratically well under this


def same_rows(lora: StepShape, base: StepShape) -> bool:
    """Whether `base` runs the rows `lora` runs (prompt chunks, decodes, contexts), as base rows."""
    return all(a == b for name, a, b in zip(StepShape._fields, lora, base) if name not in _LORA_SHAPE_FIELDS)


def fit_lora_terms(deployment: Deployment, efficiency: Efficiency,
                   pairs: Sequence[tuple[Observation, Observation]]) -> Efficiency:
    """`efficiency` with `lora_flops` and `lora_segment_overhead_s` fitted to the time adapters add to a step.

    Each pair is a step under adapters and its twin: the same rows as base rows, measured right after it. The
    terms price the measured difference, so the base terms' error on these shapes (the joint fit's compromise
    over the whole grid) and load that drifts between far-apart steps stay out of them; with the LoRA steps in
    the joint fit instead, a few percent of a prompt step's time was lost in its noise and `lora_flops` ran to
    its bound. Errors are relative to the base step's time, under a Cauchy loss (a pair the machine's load
    split is an outlier). A pair whose first step ran a new token count is left out: that step also built the
    base GEMMs' kernels (`new_shape_overhead_s`, which the grid may have fitted as 0), and on a small model
    that cost is as large as the adapters'.
    """
    pairs = [(a, b) for a, b in pairs if same_rows(a.shape, b.shape) and a.shape.num_lora_segments
             and not a.shape.num_new_shapes + b.shape.num_new_shapes]
    if len(pairs) < len(LORA_TERMS):
        raise ValueError(f"need at least {len(LORA_TERMS)} steps under adapters paired with their base twins, "
                         f"got {len(pairs)}")
    lora, base = [a for a, _ in pairs], [b for _, b in pairs]
    measured = np.array([a.seconds - b.seconds for a, b in pairs])
    scale = _PAIR_SCALE * np.array([b.seconds for b in base])

    def loss(x: np.ndarray) -> float:
        eff = _decode(x, efficiency, LORA_TERMS)
        added = predict(deployment, eff, lora) - predict(deployment, eff, base)
        return float(np.mean(np.log1p(((added - measured) / scale) ** 2)))

    starts = [replace(efficiency, lora_flops=f, lora_segment_overhead_s=o) for f, o in ((0.5, 1e-4), (0.05, 1e-3))]
    return _decode(min((_descend(loss, _encode(s, LORA_TERMS)) for s in starts), key=loss), efficiency, LORA_TERMS)


def fit_draft_step_overhead(draft: Deployment, efficiency: Efficiency, observations: Sequence[Observation]) -> float:
    """A draft model's `draft_step_overhead_s`: the median of its measured forward steps' time beyond what the
    cost model predicts for them with no fixed cost (`efficiency`: the draft's, from `draft_efficiency`).

    One additive term, so the median residual is its robust fit (a busy machine slows some steps threefold);
    0 when the rest of the model already prices most steps above their measured time.
    """
    if not observations:
        raise ValueError("no draft-model forward step was measured: the draft's step overhead is unknown")
    base = predict(draft, replace(efficiency, step_overhead_s=0.0), observations)
    return max(0.0, float(np.median([o.seconds for o in observations] - base)))


def fit_report(
    deployment: Deployment, efficiency: Efficiency, observations: Sequence[Observation]
) -> dict[str, dict[str, float]]:
    """Per step kind (and "all"): count, mean absolute percentage error, worst error, total-time error."""
    predicted = predict(deployment, efficiency, observations)
    measured = np.array([o.seconds for o in observations])
    kinds = np.array([o.kind for o in observations])
    report: dict[str, dict[str, float]] = {}
    for kind in ("prefill", "decode", "mixed", "all"):
        mask = np.ones(len(kinds), bool) if kind == "all" else kinds == kind
        if not mask.any():
            continue
        rel = (predicted[mask] - measured[mask]) / measured[mask]
        report[kind] = {
            "steps": int(mask.sum()),
            "mape": float(np.mean(np.abs(rel))),
            "max_abs_error": float(np.max(np.abs(rel))),
            "total_time_error": float(predicted[mask].sum() / measured[mask].sum() - 1),
        }
    return report

"""Serving metrics: per-request records, aggregate summaries, SLOs and goodput.

Definitions follow vLLM's `bench serve` so numbers compare across tools:

* TTFT (time to first token) = first_token_time - arrival_time.
* TPOT (time per output token) = (finish_time - first_token_time) / (output_tokens - 1),
  defined only for requests with more than one output token.
* ITL (inter-token latency) = gaps between consecutive output tokens, pooled over
  all requests; needs per-token times.
* E2E (end-to-end latency) = finish_time - arrival_time.
* queue = first_scheduled_time - arrival_time (time spent waiting before first admission).
* goodput = requests per second that meet every SLO target (vLLM's request goodput;
  DistServe's goodput is the highest rate at which the attainment target still holds,
  which a load sweep over these numbers finds).

Percentiles use numpy's default linear interpolation, as vLLM does. A request
aborted before it was scheduled or produced a token carries NaN for the missing
times: it counts in throughput and duration but not in the latency statistics,
and never meets an SLO.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np

from .request import Request
from .tables import REPORT_WIDTH, align_rows, banner

__all__ = [
    "RequestRecord",
    "steady_throughput",
    "SLO",
    "parse_targets",
    "summarize",
    "format_table",
    "write_per_request",
    "read_per_request",
    "timeseries",
    "empirical_cdf",
]

_NAN = float("nan")
_STAT_KEYS = ("mean", "p50", "p90", "p99", "max")
_TIME_FIELDS = ("arrival_time", "first_scheduled_time", "first_token_time", "finish_time")


def _opt(x: float) -> float | None:
    """NaN -> None, so dicts stay strict JSON."""
    return None if x != x else x


@dataclass(slots=True)
class RequestRecord:
    """One finished request's timings: small and flat so 100k of them cost little memory."""

    request_id: str
    replica: int
    arrival_time: float
    first_scheduled_time: float
    first_token_time: float
    finish_time: float
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    num_preemptions: int
    finish_reason: str
    token_times: list[float] | None = None  # time of each output token, only when per-token tracking was asked

    @classmethod
    def from_request(cls, req: Request, replica: int = 0) -> RequestRecord:
        """Snapshot a finished request; times it never reached (abort while waiting) become NaN."""
        if req.finish_time is None:
            raise ValueError(
                f"request {req.request_id!r} has no finish_time ({req.status.name}); "
                "record requests only once they have finished"
            )
        return cls(
            request_id=req.request_id,
            replica=replica,
            arrival_time=float(req.arrival_time),
            first_scheduled_time=_NAN if req.first_scheduled_time is None else float(req.first_scheduled_time),
            first_token_time=_NAN if req.first_token_time is None else float(req.first_token_time),
            finish_time=float(req.finish_time),
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
            num_cached_tokens=req.num_cached_tokens,
            num_preemptions=req.num_preemptions,
            finish_reason=req.status.finish_reason or "unknown",
            token_times=None if req.token_times is None else list(req.token_times),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        """Inverse of `to_dict` (derived keys ignored), so saved runs can be re-analysed and re-plotted."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for name in _TIME_FIELDS:
            if kw.get(name) is None:
                kw[name] = _NAN
        return cls(**kw)

    @property
    def ttft_s(self) -> float:
        return self.first_token_time - self.arrival_time

    @property
    def e2e_s(self) -> float:
        return self.finish_time - self.arrival_time

    @property
    def queue_s(self) -> float:
        return self.first_scheduled_time - self.arrival_time

    @property
    def tpot_s(self) -> float | None:
        """vLLM's TPOT: decode time over the tokens after the first; undefined for one-token outputs."""
        if self.num_output_tokens <= 1:
            return None
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN -> None), with the derived latencies so a JSONL file is useful on its own."""
        d: dict[str, Any] = {
            "request_id": self.request_id,
            "replica": self.replica,
            "arrival_time": self.arrival_time,
            "first_scheduled_time": _opt(self.first_scheduled_time),
            "first_token_time": _opt(self.first_token_time),
            "finish_time": self.finish_time,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "num_preemptions": self.num_preemptions,
            "finish_reason": self.finish_reason,
            "ttft_s": _opt(self.ttft_s),
            "tpot_s": None if self.tpot_s is None else _opt(self.tpot_s),
            "e2e_s": self.e2e_s,
            "queue_s": _opt(self.queue_s),
        }
        if self.token_times is not None:
            d["token_times"] = list(self.token_times)
        return d


_SLO_KEYS = ("ttft", "tpot", "e2e")
_SLO_FORM = "comma-separated key=value with keys ttft, tpot, e2e and values like 2s, 100ms or 30 (seconds), e.g. 'ttft=2s,tpot=100ms'"
_SLO_VALUE = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?$")


def parse_targets(spec: str, keys: Iterable[str], form: str) -> dict[str, float]:
    """Parse "key=2s,other=100ms" (bare numbers are seconds) into {key: seconds}; `form` goes in errors.

    Shared by the goodput SLO here and the planner's percentile SLO, so both read durations alike.
    """
    keys = tuple(keys)
    if not spec or not spec.strip():
        raise ValueError(f"empty SLO spec; expected {form}")
    targets: dict[str, float] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not sep or key not in keys:
            raise ValueError(f"bad SLO part {part.strip()!r}; expected {form}")
        if key in targets:
            raise ValueError(f"SLO key {key!r} given twice in {spec!r}; expected {form}")
        m = _SLO_VALUE.match(value)
        if m is None:
            raise ValueError(f"bad SLO value in {part.strip()!r}; expected {form}")
        seconds = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
        if seconds <= 0:
            raise ValueError(f"SLO target in {part.strip()!r} must be > 0; expected {form}")
        targets[key] = seconds
    return targets


@dataclass(frozen=True)
class SLO:
    """Latency targets a request must meet to count toward goodput; None means no target."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for key in _SLO_KEYS:
            v = getattr(self, f"{key}_s")
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"SLO {key} target must be a positive finite number of seconds, got {v!r}")

    @classmethod
    def parse(cls, spec: str) -> SLO:
        """Parse the CLI form "ttft=2s,tpot=100ms,e2e=30" (bare numbers are seconds)."""
        return cls(**{f"{key}_s": v for key, v in parse_targets(spec, _SLO_KEYS, _SLO_FORM).items()})

    def met_by(self, r: RequestRecord) -> bool:
        """All given targets met (inclusive); TPOT is skipped for one-token outputs; aborted requests never count."""
        if r.finish_reason == "abort":
            return False
        if self.ttft_s is not None and not r.ttft_s <= self.ttft_s:  # `not <=` so NaN fails
            return False
        if self.e2e_s is not None and not r.e2e_s <= self.e2e_s:
            return False
        if self.tpot_s is not None:
            tpot = r.tpot_s
            if tpot is not None and not tpot <= self.tpot_s:
                return False
        return True

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "e2e_s": self.e2e_s}

    def __str__(self) -> str:
        parts = [f"{k}={_fmt_seconds(getattr(self, f'{k}_s'))}" for k in _SLO_KEYS if getattr(self, f"{k}_s") is not None]
        return ",".join(parts) or "none"


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:g}ms" if s < 1 else f"{s:g}s"


def _stats(x: np.ndarray) -> dict[str, float | None]:
    """mean/p50/p90/p99/max over the finite values; all None when there are none."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return dict.fromkeys(_STAT_KEYS)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(x.max())}


_NUM_FIELDS = attrgetter(
    "arrival_time", "first_scheduled_time", "first_token_time", "finish_time",
    "num_prompt_tokens", "num_output_tokens", "num_cached_tokens", "num_preemptions",
)


def _columns(records: Sequence[RequestRecord]) -> np.ndarray:
    """One (n, 8) float array of the numeric fields: one Python pass, then everything is vectorised."""
    return np.array(list(map(_NUM_FIELDS, records)), dtype=np.float64).reshape(len(records), 8)


def _flat_token_times(records: Iterable[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """All token times concatenated, and each tracked record's token count."""
    tts = [r.token_times for r in records if r.token_times is not None]
    lengths = np.fromiter(map(len, tts), dtype=np.int64, count=len(tts))
    flat = np.fromiter(chain.from_iterable(tts), dtype=np.float64, count=int(lengths.sum()))
    return flat, lengths


def _rate(x: float, duration: float) -> float | None:
    return x / duration if duration > 0 else None


def summarize(records: Sequence[RequestRecord], *, slo: SLO | None = None) -> dict[str, Any]:
    """Aggregates as a JSON-able dict (units in key names); vectorised, so 100k records take well under a second.

    Keys: num_requests, duration_s (first arrival to last finish), request_throughput,
    input/output/total_token_throughput, total_input_tokens, total_output_tokens,
    ttft_s, tpot_s, e2e_s, queue_s (each {mean, p50, p90, p99, max}; tpot over requests
    with >1 output token), itl_s (only when some record has token_times),
    num_preemptions, prefix_cache_hit_rate, finish_reasons, and with an SLO: slo,
    slo_attainment, goodput. Rates are None when duration_s is 0.
    """
    n = len(records)
    if n == 0:
        raise ValueError("summarize() needs at least one finished request record; got none")
    c = _columns(records)
    arrival, sched, first_tok, finish = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    n_prompt, n_out, n_cached, n_preempt = c[:, 4], c[:, 5], c[:, 6], c[:, 7]

    duration = float(finish.max() - arrival.min())
    total_in, total_out = int(n_prompt.sum()), int(n_out.sum())
    ttft = first_tok - arrival
    e2e = finish - arrival
    multi = n_out > 1
    tpot = (finish[multi] - first_tok[multi]) / (n_out[multi] - 1)

    out: dict[str, Any] = {
        "num_requests": n,
        "duration_s": duration,
        "request_throughput": _rate(n, duration),
        "input_token_throughput": _rate(total_in, duration),
        "output_token_throughput": _rate(total_out, duration),
        "total_token_throughput": _rate(total_in + total_out, duration),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "ttft_s": _stats(ttft),
        "tpot_s": _stats(tpot),
        "e2e_s": _stats(e2e),
        "queue_s": _stats(sched - arrival),
    }
    if any(r.token_times is not None for r in records):
        flat, lengths = _flat_token_times(records)
        gaps = np.diff(flat)
        # drop the gap that straddles two requests: it sits just before each request's first token
        starts = np.cumsum(lengths)[:-1] - 1
        keep = np.ones(gaps.size, dtype=bool)
        keep[starts[(starts >= 0) & (starts < gaps.size)]] = False
        out["itl_s"] = _stats(gaps[keep])
    out["num_preemptions"] = int(n_preempt.sum())
    out["prefix_cache_hit_rate"] = float(n_cached.sum() / n_prompt.sum()) if n_prompt.sum() > 0 else 0.0
    out["finish_reasons"] = dict(Counter(r.finish_reason for r in records))

    if slo is not None:
        ok = np.fromiter((r.finish_reason != "abort" for r in records), dtype=bool, count=n)
        if slo.ttft_s is not None:
            ok &= ttft <= slo.ttft_s  # NaN compares False: never-started requests fail
        if slo.e2e_s is not None:
            ok &= e2e <= slo.e2e_s
        if slo.tpot_s is not None:
            tpot_ok = np.ones(n, dtype=bool)
            tpot_ok[multi] = tpot <= slo.tpot_s
            ok &= tpot_ok
        good = int(ok.sum())
        out["slo"] = slo.to_dict()
        out["slo_attainment"] = good / n
        out["goodput"] = _rate(good, duration)
    return out


def steady_throughput(records: Sequence[RequestRecord]) -> float:
    """Capacity: completions per second between the 10th and 90th percentile finish of an offline run.

    With every request queued at t=0 the batch stays full; trimming the ramp-up
    and the drain tail (a few long requests finishing at a small batch) leaves
    the rate no arrival process can beat.
    """
    finish = sorted(r.finish_time for r in records)
    lo, hi = finish[len(finish) // 10], finish[(len(finish) * 9) // 10]
    return (len(finish) * 0.8) / (hi - lo) if hi > lo else len(finish) / max(finish[-1], 1e-9)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(summary: dict[str, Any], title: str | None = None) -> str:
    """An aligned terminal table in the layout of vLLM's benchmark report, latencies in ms."""
    width = REPORT_WIDTH
    head = [
        ("Requests:", str(summary["num_requests"])),
        ("Duration (s):", _fmt(summary["duration_s"], ".2f")),
    ]
    if "total_input_tokens" in summary:
        head += [("Total input tokens:", str(summary["total_input_tokens"])),
                 ("Total output tokens:", str(summary["total_output_tokens"]))]
    head += [
        ("Request throughput (req/s):", _fmt(summary["request_throughput"], ".2f")),
        ("Input token throughput (tok/s):", _fmt(summary["input_token_throughput"], ".2f")),
        ("Output token throughput (tok/s):", _fmt(summary["output_token_throughput"], ".2f")),
        ("Total token throughput (tok/s):", _fmt(summary["total_token_throughput"], ".2f")),
    ]
    latency = [["", *_STAT_KEYS]]
    for label, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"), ("queue", "queue_s")):
        st = summary.get(key)
        if st is not None:
            latency.append([label, *(_fmt(None if st[k] is None else st[k] * 1e3, ".2f") for k in _STAT_KEYS)])
    tail = [("Preemptions:", str(summary["num_preemptions"])),
            ("Prefix cache hit rate:", f"{summary['prefix_cache_hit_rate']:.2%}")]
    if "slo" in summary:
        targets = [f"{k[:-2]}<={_fmt_seconds(v)}" for k, v in summary["slo"].items() if v is not None]
        tail += [("SLO:", " ".join(targets) or "none"),
                 ("SLO attainment:", f"{summary['slo_attainment']:.2%}"),
                 ("Goodput (req/s):", _fmt(summary["goodput"], ".2f"))]
    return "\n".join([
        banner(title or "Serving Benchmark Result", width),
        *align_rows(head, ("<", ">"), sep="", width=width),
        banner("Latency (ms)", width, "-"),
        *align_rows(latency, ("<12", *[">10"] * len(_STAT_KEYS)), sep="", width=width),
        "-" * width,
        *align_rows(tail, ("<", ">"), sep="", width=width),
        "=" * width,
    ])


def write_per_request(records: Iterable[RequestRecord], path: str | os.PathLike[str]) -> None:
    """JSONL, one `to_dict` per line: streamable and greppable, and `read_per_request` reads it back."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), allow_nan=False))
            f.write("\n")


def read_per_request(path: str | os.PathLike[str]) -> list[RequestRecord]:
    """Records from a `write_per_request` file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [RequestRecord.from_dict(json.loads(line)) for line in f if line.strip()]


def _bin_index(t: np.ndarray, t0: float, bin_s: float, nbins: int) -> np.ndarray:
    return np.clip(np.floor((t - t0) / bin_s), 0, nbins - 1).astype(np.int64)


def _spread_uniform(a: np.ndarray, b: np.ndarray, m: np.ndarray, t0: float, bin_s: float, nbins: int) -> np.ndarray:
    """Mass per bin when each mass m_i is spread uniformly over [a_i, b_i]; O(n + nbins), conserves mass.

    Partial first and last bins get their overlap share; the full bins between get the
    rest in equal parts through a difference array, so no per-token work is done.
    """
    ia, ib = _bin_index(a, t0, bin_s, nbins), _bin_index(b, t0, bin_s, nbins)
    same = ia == ib
    mass = np.zeros(nbins)
    mass += np.bincount(ia[same], weights=m[same], minlength=nbins)  # (bincount of nothing is int-typed)
    d = ~same
    a, b, m, ia, ib = a[d], b[d], m[d], ia[d], ib[d]
    rate = m / (b - a)
    first = np.clip(rate * (t0 + (ia + 1) * bin_s - a), 0, m)
    last = np.clip(rate * (b - (t0 + ib * bin_s)), 0, m - first)
    middle = m - first - last
    nmid = ib - ia - 1
    has_mid = nmid > 0
    first = first + np.where(has_mid, 0.0, middle)  # rounding residue when there is no middle bin
    mass += np.bincount(ia, weights=first, minlength=nbins)
    mass += np.bincount(ib, weights=last, minlength=nbins)
    per = middle[has_mid] / nmid[has_mid]
    diff = np.bincount(ia[has_mid] + 1, weights=per, minlength=nbins + 1)
    diff -= np.bincount(ib[has_mid], weights=per, minlength=nbins + 1)
    mass += np.cumsum(diff)[:nbins]
    return mass


MAX_CDF_POINTS = 2000
"""Points an empirical CDF is thinned to: a smooth curve, and small, fast plots of 100k-request runs."""


def empirical_cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted finite values, fraction of them at or below each), thinned to at most MAX_CDF_POINTS."""
    x = np.sort(values[np.isfinite(values)])
    y = np.arange(1, x.size + 1) / max(x.size, 1)
    if x.size > MAX_CDF_POINTS:
        idx = np.unique(np.linspace(0, x.size - 1, MAX_CDF_POINTS).astype(np.int64))
        x, y = x[idx], y[idx]
    return x, y


def timeseries(records: Sequence[RequestRecord], bin_s: float | None = None) -> dict[str, np.ndarray]:
    """Series over time for plots, derived from the records alone (no engine hooks needed).

    time_s: bin starts, in the records' clock, from the first arrival; bins cover up to the last finish.
    output_token_throughput: tokens/s per bin, from token_times where present, else the first
      token at first_token_time and the rest spread uniformly up to finish_time.
    num_waiting: arrived but not yet first-scheduled, sampled at bin starts (a request
      aborted while waiting counts until its finish_time).
    num_running: first-scheduled and not yet finished, at bin starts (a preempted
      request still counts: records do not keep preemption times).
    bin_s defaults to duration/200 (1 s when the duration is 0).
    """
    n = len(records)
    if n == 0:
        raise ValueError("timeseries() needs at least one request record; got none")
    c = _columns(records)
    arrival, sched, first_tok, finish, n_out = c[:, 0], c[:, 1], c[:, 2], c[:, 3], c[:, 5]
    t0 = float(arrival.min())
    duration = float(finish.max()) - t0
    if bin_s is None:
        bin_s = duration / 200 if duration > 0 else 1.0
    if not (math.isfinite(bin_s) and bin_s > 0):
        raise ValueError(f"bin_s must be a positive number of seconds, got {bin_s!r}")
    nbins = max(1, math.ceil(round(duration / bin_s, 9)))
    time_s = t0 + np.arange(nbins) * bin_s

    tracked = np.fromiter((r.token_times is not None for r in records), dtype=bool, count=n)
    mass = np.zeros(nbins)
    if tracked.any():
        flat, _ = _flat_token_times(records)
        mass += np.bincount(_bin_index(flat, t0, bin_s, nbins), minlength=nbins)
    est = ~tracked & (n_out >= 1) & np.isfinite(first_tok)
    if est.any():
        mass += np.bincount(_bin_index(first_tok[est], t0, bin_s, nbins), minlength=nbins)
        rest = est & (n_out > 1)
        mass += _spread_uniform(first_tok[rest], finish[rest], n_out[rest] - 1, t0, bin_s, nbins)
    throughput = np.maximum(mass, 0.0) / bin_s  # clamp -1e-13 cumsum residue

    # counts at t: #(event time <= t) for sorted event times; never-scheduled requests "leave" waiting at finish
    sched_eff = np.where(np.isfinite(sched), sched, finish)
    arrived = np.searchsorted(np.sort(arrival), time_s, side="right")
    started = np.searchsorted(np.sort(sched_eff), time_s, side="right")
    finished = np.searchsorted(np.sort(np.maximum(finish, sched_eff)), time_s, side="right")
    return {
        "time_s": time_s,
        "output_token_throughput": throughput,
        "num_waiting": (arrived - started).astype(np.int64),
        "num_running": (started - finished).astype(np.int64),
    }

"""PNG reports of a run and of a load sweep.

matplotlib is imported inside the functions and drives an Agg canvas directly
(no pyplot, no global backend switch), so importing batchserve never needs a
display and plotting is safe from any thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import metrics
from .metrics import RequestRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes



def _new_figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)


def _cdf(ax: Axes, values: np.ndarray, label: str) -> bool:
    """Empirical CDF of the finite values; False when there is nothing to draw."""
    x, y = metrics.empirical_cdf(values)
    if x.size == 0:
        return False
    ax.step(x, y, where="post", label=label)
    return True


def _finish_cdf_axes(ax: Axes, drawn: list[np.ndarray], xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    finite = [v[np.isfinite(v)] for v in drawn]
    if finite and all(v.size and v.min() > 0 for v in finite):
        ax.set_xscale("log")  # latencies span decades; log only when every value can be shown
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")


def _slo_line(ax: Axes, summary: dict[str, Any], key: str, label: str) -> None:
    target = (summary.get("slo") or {}).get(key)
    if target is not None:
        ax.axvline(target, color="red", linestyle="--", linewidth=1, label=f"{label} SLO")


def plot_run(
    records: Sequence[RequestRecord],
    summary: dict[str, Any],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> None:
    """One PNG with 4 panels: CDFs of TTFT and E2E, CDFs of TPOT (and ITL), output token
    throughput over time, and waiting/running request counts over time.

    Per-request (TTFT, E2E) and per-token (TPOT, ITL) latencies get separate panels because
    they sit orders of magnitude apart; SLO targets in `summary` are drawn as red dashed lines.
    """
    if not records:
        raise ValueError("plot_run() needs at least one request record; got none")
    fig, axs = _new_figure(2, 2, (13, 9))
    ax_req, ax_tok, ax_thr, ax_q = axs[0, 0], axs[0, 1], axs[1, 0], axs[1, 1]

    ttft = np.array([r.ttft_s for r in records], dtype=np.float64)
    e2e = np.array([r.e2e_s for r in records], dtype=np.float64)
    tpot = np.array([t for r in records if (t := r.tpot_s) is not None], dtype=np.float64)

    drawn = [v for v, lbl in ((ttft, "TTFT"), (e2e, "E2E")) if _cdf(ax_req, v, lbl)]
    _slo_line(ax_req, summary, "ttft_s", "TTFT")
    _slo_line(ax_req, summary, "e2e_s", "E2E")
    _finish_cdf_axes(ax_req, drawn, "latency (s)", "Per-request latency CDF")

    drawn = [tpot] if _cdf(ax_tok, tpot, "TPOT") else []
    tracked = [r.token_times for r in records if r.token_times is not None and len(r.token_times) > 1]
    if tracked:
        itl = np.concatenate([np.diff(np.asarray(t, dtype=np.float64)) for t in tracked])
        if _cdf(ax_tok, itl, "ITL"):
            drawn.append(itl)
    _slo_line(ax_tok, summary, "tpot_s", "TPOT")
    _finish_cdf_axes(ax_tok, drawn, "latency (s)", "Per-token latency CDF")
    if not drawn:
        ax_tok.text(0.5, 0.5, "no request with >1 output token", ha="center", va="center", transform=ax_tok.transAxes)

    t0 = min(r.arrival_time for r in records)
    duration = max(r.finish_time for r in records) - t0
    bin_s = duration / 200 if duration > 0 else 1.0
    ts = metrics.timeseries(records, bin_s=bin_s)
    rel = ts["time_s"] - t0
    edges = np.append(rel, rel[-1] + bin_s)

    ax_thr.stairs(ts["output_token_throughput"], edges, fill=True, alpha=0.6, label="per bin")
    mean_thr = summary.get("output_token_throughput")
    if mean_thr is not None:
        ax_thr.axhline(mean_thr, color="black", linestyle="--", linewidth=1, label=f"mean {mean_thr:.1f} tok/s")
    ax_thr.set_xlabel("time since first arrival (s)")
    ax_thr.set_ylabel("output tokens/s")
    ax_thr.set_title(f"Output token throughput ({bin_s:.3g} s bins)")
    ax_thr.grid(True, alpha=0.3)
    ax_thr.legend(loc="upper right")

    ax_q.step(rel, ts["num_waiting"], where="post", label="waiting")
    ax_q.step(rel, ts["num_running"], where="post", label="running")
    ax_q.set_xlabel("time since first arrival (s)")
    ax_q.set_ylabel("requests")
    ax_q.set_title("Queue: waiting and running requests")
    ax_q.grid(True, alpha=0.3)
    ax_q.legend(loc="upper right")

    subtitle = (
        f"{summary.get('num_requests', len(records))} requests, "
        f"{_num(summary.get('request_throughput'), '.2f')} req/s, "
        f"{_num(summary.get('output_token_throughput'), '.1f')} output tok/s"
    )
    if summary.get("slo_attainment") is not None:
        subtitle += f", SLO attainment {summary['slo_attainment']:.1%}"
    fig.suptitle(f"{title}\n{subtitle}" if title else subtitle)
    _save(fig, path)


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _stat_ms(summary: dict[str, Any], key: str, stat: str) -> float:
    v = (summary.get(key) or {}).get(stat)
    return math.nan if v is None else v * 1e3


def _rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def _annotate(ax: Axes, xs: np.ndarray, ys: np.ndarray, rates: np.ndarray) -> None:
    for x, y, rate in zip(xs, ys, rates):
        if math.isfinite(x) and math.isfinite(y):
            ax.annotate(_rate_label(rate), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)


def plot_sweep(
    points: list[tuple[float, dict[str, Any]]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> None:
    """Load sweep, points = (offered rate req/s, summary): p50/p99 TTFT and TPOT vs achieved
    output-token throughput, and achieved vs offered request rate (with y=x, and goodput
    when the summaries carry an SLO). Each point is labelled with its offered rate; an
    infinite rate (all requests at t=0) is kept in the latency panels only.
    """
    if not points:
        raise ValueError("plot_sweep() needs at least one (rate, summary) point; got none")
    pts = sorted(points, key=lambda p: p[0])
    rates = np.array([p[0] for p in pts], dtype=np.float64)
    sums = [p[1] for p in pts]
    thr = np.array([_none_nan(s.get("output_token_throughput")) for s in sums])

    fig, axs = _new_figure(1, 3, (17, 5.5))
    for ax, key, name in ((axs[0, 0], "ttft_s", "TTFT"), (axs[0, 1], "tpot_s", "TPOT")):
        for stat, marker in (("p50", "o"), ("p99", "s")):
            ys = np.array([_stat_ms(s, key, stat) for s in sums])
            ax.plot(thr, ys, marker=marker, label=f"{stat} {name}")
            _annotate(ax, thr, ys, rates)
        slo_target = next((s["slo"][key] for s in sums if s.get("slo") and s["slo"].get(key)), None)
        if slo_target is not None:
            ax.axhline(slo_target * 1e3, color="red", linestyle="--", linewidth=1, label=f"{name} SLO")
        ax.set_xlabel("achieved output throughput (tok/s)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(f"{name} vs throughput")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")

    ax = axs[0, 2]
    finite = np.isfinite(rates)
    achieved = np.array([_none_nan(s.get("request_throughput")) for s in sums])
    if finite.any():
        r, a = rates[finite], achieved[finite]
        ax.plot(r, a, marker="o", label="achieved")
        _annotate(ax, r, a, r)
        hi = float(np.nanmax(np.append(r, a)))
        ax.plot([0, hi], [0, hi], color="gray", linestyle=":", label="y = x")
        if any("goodput" in s for s in sums):
            good = np.array([_none_nan(s.get("goodput")) for s in sums])[finite]
            ax.plot(r, good, marker="^", label="goodput (meets SLO)")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no finite offered rate", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("achieved request throughput (req/s)")
    ax.set_title("Achieved vs offered load")
    ax.grid(True, alpha=0.3)

    fig.suptitle(title or "Load sweep (labels: offered rate, req/s)")
    _save(fig, path)


def _none_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def plot_plan(
    points: Sequence[tuple[float, float, str]],
    frontier: Sequence[tuple[float, float]],
    metric: str,
    target_s: float,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> None:
    """Planner candidates: points = (dollars per hour, latency s, label) with the Pareto frontier
    (cost vs latency) drawn through `frontier` and the SLO target as a horizontal line."""
    if not points:
        raise ValueError("plot_plan() needs at least one candidate; got none")
    fig, axs = _new_figure(1, 1, (9, 6))
    ax = axs[0, 0]
    ax.scatter([p[0] for p in points], [p[1] * 1e3 for p in points], color="tab:blue", label="verified candidates")
    for cost, latency, label in points:
        ax.annotate(label, (cost, latency * 1e3), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted(frontier)
    ax.plot([f[0] for f in front], [f[1] * 1e3 for f in front], color="tab:orange", marker="o", drawstyle="steps-post",
            label="Pareto frontier")
    ax.axhline(target_s * 1e3, color="red", linestyle="--", linewidth=1, label=f"{metric} target")
    ax.set_xlabel("cost ($/hour)")
    ax.set_ylabel(f"predicted {metric} (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.suptitle(title or "Cost vs latency")
    _save(fig, path)


def plot_validation(
    measured: Sequence[RequestRecord], predicted: Sequence[RequestRecord], path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Measured (real engine) and predicted (simulator) CDFs of TTFT, TPOT and E2E latency, one panel each."""
    fig, axes = _new_figure(1, 3, (15, 4.2))
    for ax, (attr, name) in zip(axes[0], (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E latency"))):
        drawn = []
        for records, label in ((measured, "measured"), (predicted, "predicted")):
            values = np.array([np.nan if getattr(r, attr) is None else getattr(r, attr) * 1000 for r in records])
            if _cdf(ax, values, label):
                drawn.append(values)
        _finish_cdf_axes(ax, drawn, f"{name} (ms)", name)
    if title:
        fig.suptitle(title)
    _save(fig, path)

"""Draw a Report as one HTML file: tables in plain HTML, charts with Plotly (its JS embedded once, so no network)."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import RequestRecord, empirical_cdf, timeseries
from .content import Frontier, Headline, Report

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 3px 12px; border-bottom: 1px solid #eee; text-align: left; }
td.value { text-align: right; font-variant-numeric: tabular-nums; }
.problem { background: #fdecea; border: 2px solid #d93025; padding: 0.8em 1em; font-weight: 600; }
.note { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.4em 1em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def format_value(value: float | str) -> str:
    """A headline number as the page shows it: integers whole, the rest to 4 significant digits."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4g}" if math.isfinite(value) else str(value)


def _headline_table(rows: Sequence[Headline]) -> str:
    cells = "".join(
        f'<tr><th>{html.escape(h.label)}</th><td class="value" data-key="{html.escape(h.key)}" '
        f'data-value="{html.escape(str(h.value))}">{html.escape(format_value(h.value))}</td></tr>'
        for h in rows
    )
    return f'<table id="headline">{cells}</table>'


def _latency_figure(runs: dict[str, Sequence[RequestRecord]]) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("TTFT", "TPOT", "end-to-end latency"))
    for i, (name, records) in enumerate(runs.items()):
        for col, metric in enumerate(("ttft_s", "tpot_s", "e2e_s"), start=1):
            values = np.array([getattr(r, metric) for r in records], dtype=np.float64)  # None (tpot) -> nan
            x, y = empirical_cdf(values)
            fig.add_scatter(x=x, y=y, mode="lines", line_shape="hv", name=name, legendgroup=name,
                            showlegend=col == 1, line_color=_COLORS[i % len(_COLORS)], row=1, col=col,
                            hovertemplate="%{x:.4g} s: %{y:.1%} of requests<extra>" + name + "</extra>")
            fig.update_xaxes(title_text="seconds", row=1, col=col)
    fig.update_yaxes(title_text="fraction of requests", range=[0, 1.02], row=1, col=1)
    fig.update_layout(height=380, margin={"t": 40})
    return fig


def _over_time_figure(runs: dict[str, Sequence[RequestRecord]]) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("output token throughput", "requests waiting and running"))
    for i, (name, records) in enumerate(runs.items()):
        ts = timeseries(records)
        t = ts["time_s"] - ts["time_s"][0]
        color = _COLORS[i % len(_COLORS)]
        fig.add_scatter(x=t, y=ts["output_token_throughput"], mode="lines", name=f"{name} tok/s", line_color=color,
                        legendgroup=name, row=1, col=1)
        fig.add_scatter(x=t, y=ts["num_waiting"], mode="lines", name=f"{name} waiting", line_color=color,
                        line_dash="dot", line_shape="hv", legendgroup=name, row=2, col=1)
        fig.add_scatter(x=t, y=ts["num_running"], mode="lines", name=f"{name} running", line_color=color,
                        line_shape="hv", legendgroup=name, row=2, col=1)
    fig.update_yaxes(title_text="tokens/s", row=1, col=1)
    fig.update_yaxes(title_text="requests", row=2, col=1)
    fig.update_xaxes(title_text="seconds since the first arrival", row=2, col=1)
    fig.update_layout(height=520, margin={"t": 40})
    return fig


def _versus_table(rows: Sequence[tuple[str, float | None, float | None]]) -> str:
    def cell(x: float | None) -> str:
        return "-" if x is None else format_value(x)

    body = "".join(
        f"<tr><th>{html.escape(name)}</th><td class='value'>{cell(p)}</td><td class='value'>{cell(m)}</td>"
        f"<td class='value'>{'-' if not p or not m else f'{p / m - 1:+.1%}'}</td></tr>"
        for name, p, m in rows
    )
    return f"<table><tr><th></th><th>predicted</th><th>measured</th><th>predicted / measured - 1</th></tr>{body}</table>"


def _frontier_figure(frontier: Frontier) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[p[0] for p in frontier.points], y=[p[1] for p in frontier.points], mode="markers",
                    text=[p[2] for p in frontier.points], name="candidates",
                    hovertemplate="%{text}<br>$%{x:.2f}/h, %{y:.3g} s<extra></extra>")
    fig.add_scatter(x=[p[0] for p in frontier.pareto], y=[p[1] for p in frontier.pareto], mode="lines+markers",
                    line_shape="hv", name="Pareto frontier")
    fig.add_hline(y=frontier.target_s, line_dash="dash", line_color="red", annotation_text=f"{frontier.metric} SLO")
    fig.update_layout(height=420, margin={"t": 20}, xaxis_title="cost ($/hour)",
                      yaxis_title=f"{frontier.metric} (s)")
    return fig


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def render(report: Report) -> str:
    """The page: problem first (if any), headline, charts that have data, then the configuration."""
    parts = [f"<h1>{html.escape(report.title)}</h1>",
             f"<p>batchserve {html.escape(report.command)}</p>"]
    if report.problem:
        parts.append(f'<p class="problem" id="problem">{html.escape(report.problem)}</p>')
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in report.notes]
    parts += ["<h2>Headline</h2>", _headline_table(report.headline)]
    figures: list[tuple[str, Any]] = []
    runs = {name: records for name, records in report.runs.items() if records}
    if runs and not report.problem:
        figures += [("Latency CDFs", _latency_figure(runs)), ("Throughput and queue over time", _over_time_figure(runs))]
    if report.versus and not report.problem:
        parts += ["<h2>Predicted vs measured</h2>", _versus_table(report.versus)]
    if report.frontier is not None and report.frontier.points:
        figures.append(("Cost vs latency frontier", _frontier_figure(report.frontier)))
    for i, (title, fig) in enumerate(figures):
        # the first chart carries plotly.js, the rest reuse it: one self-contained file, the library once
        parts += [f"<h2>{html.escape(title)}</h2>",
                  fig.to_html(full_html=False, include_plotlyjs=i == 0, config={"displaylogo": False})]
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(report.config, indent=2, default=str))}</pre>"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_report(report: Report, path: str | os.PathLike[str]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report), encoding="utf-8")

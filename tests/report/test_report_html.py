"""Each command's --report opens in headless Chromium without console messages and shows its --json's numbers."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "jobs"))
from jobfiles import completion, write_jsonl

from batchserve.entrypoints.cli import main
from batchserve.report.html import format_value

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: `apt-get install -y chromium` (Debian)")

TINY = ["--model", "tiny", "--device", "cpu", "--kv-cache-memory", "4MiB", "-q"]
PLAN = ["plan", "--model", "llama-3.1-8b", "--hardware", "h100-sxm,a100-80gb", "--tp", "1,2", "--pp", "1",
        "--weight-dtype", "bf16", "--max-num-batched-tokens", "512", "--router", "round-robin", "--num-requests", "100",
        "--workers", "1", "--no-cache", "-q", "--max-gpus", "4", "--price", "h100-sxm=4.0,a100=2.2", "--rate", "60"]
CELL = re.compile(r'data-key="([^"]+)" data-value="([^"]*)">([^<]*)<')


def open_in_chromium(page: Path, screenshot: Path) -> str:
    """The rendered DOM after the page's scripts ran; fails on any console message (errors and warnings alike)."""
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--enable-logging=stderr", "--v=0", "--window-size=1200,2400", f"--screenshot={screenshot}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert screenshot.stat().st_size > 10_000  # the test's artifact: a look at what a user sees
    return run.stdout


def at(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def assert_headline_matches(dom: str, data: dict[str, Any], must_show: list[str]) -> dict[str, str]:
    """Every headline cell equals its number in the JSON, as stored and as displayed; `must_show` keys are there."""
    cells = {key: (unescape(value), unescape(shown)) for key, value, shown in CELL.findall(dom)}
    assert set(must_show) <= set(cells), sorted(cells)
    for key, (value, shown) in cells.items():
        expected = at(data, key)
        if isinstance(expected, str):
            assert value == shown == expected
        else:
            assert math.isclose(float(value), expected, rel_tol=1e-12), key
            assert shown == format_value(expected), key
    return {key: shown for key, (_, shown) in cells.items()}


def charts(dom: str) -> int:
    return dom.count('class="main-svg"')


def test_simulate_report(tmp_path) -> None:
    page, out = tmp_path / "sim.html", tmp_path / "sim.json"
    assert main(["simulate", "--num-requests", "300", "-q", "--json", str(out), "--report", str(page)]) == 0
    dom = open_in_chromium(page, tmp_path / "sim.png")
    assert_headline_matches(dom, json.loads(out.read_text()), ["metrics.request_throughput", "metrics.ttft_s.p99",
                                                                "metrics.output_token_throughput"])
    assert charts(dom) >= 2 and 'id="problem"' not in dom  # latency CDFs, throughput and queue
    assert not re.search(r"<(script|link)[^>]*\s(src|href)=[\"']?https?:", page.read_text())  # plotly.js embedded


def test_plan_report_and_an_infeasible_plan_says_so_first(tmp_path) -> None:
    page, out = tmp_path / "plan.html", tmp_path / "plan.json"
    assert main([*PLAN, "--slo", "ttft_p90=1s,tpot_p90=60ms", "--json", str(out), "--report", str(page)]) == 0
    dom = open_in_chromium(page, tmp_path / "plan.png")
    data = json.loads(out.read_text())
    assert_headline_matches(dom, data, ["best.cost_per_hour", "best.num_gpus", "best.capacity"])
    assert charts(dom) >= 1 and "Pareto frontier" in dom

    assert main([*PLAN, "--slo", "tpot_p90=1ms", "--json", str(out), "--report", str(page)]) == 1
    dom = open_in_chromium(page, tmp_path / "infeasible.png")
    body = dom.split("<body>")[1]
    assert body.index('id="problem"') < body.index("Headline")  # said at the top
    assert "Infeasible: no deployment within 4 GPUs meets the SLO tpot_p90=1ms" in dom
    assert charts(dom) == 0  # nothing verified: no empty frontier
    assert json.loads(out.read_text())["feasible"] is False


def test_validate_report_shows_measured_and_predicted(tmp_path) -> None:
    page, out = tmp_path / "validate.html", tmp_path / "validate.json"
    assert main(["validate", *TINY, "--hardware", "cpu-local", "--num-requests", "8", "--input-len", "32",
                 "--output-len", "8", "--json", str(out), "--report", str(page)]) == 0
    dom = open_in_chromium(page, tmp_path / "validate.png")
    assert_headline_matches(dom, json.loads(out.read_text()), ["metrics.ttft_p50.measured", "metrics.ttft_p50.predicted",
                                                                "per_request_mape.e2e"])
    assert "Predicted vs measured" in dom and charts(dom) >= 2 and ">measured<" in dom and ">predicted<" in dom


def test_run_report_and_its_estimate(tmp_path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [completion(f"r{i}", f"question {i}", max_tokens=6) for i in range(8)])
    page, out = tmp_path / "run.html", tmp_path / "run.json"
    assert main(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), *TINY, "--estimate", "h100-sxm", "--and-run",
                 "--json", str(out), "--report", str(page)]) == 0
    dom = open_in_chromium(page, tmp_path / "run.png")
    data = json.loads(out.read_text())
    shown = assert_headline_matches(dom, data, ["summary.num_ok", "summary.output_tokens", "summary.wall_s",
                                                "estimated_vs_actual.actual_wall_s", "summary.prompt_tokens_saved"])
    assert shown["summary.num_ok"] == "8"
    assert "Predicted vs measured" in dom and charts(dom) >= 2


def test_an_interrupted_run_says_so_instead_of_charts(tmp_path, monkeypatch) -> None:
    from batchserve.jobs import engine_backend

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    inp = write_jsonl(tmp_path / "in.jsonl", [completion(f"r{i}", f"question {i}", max_tokens=6) for i in range(5)])
    monkeypatch.setattr(engine_backend, "local_job", interrupted)
    page = tmp_path / "run.html"
    assert main(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), *TINY, "--report", str(page)]) == 130
    dom = open_in_chromium(page, tmp_path / "interrupted.png")
    body = dom.split("<body>")[1]
    assert body.index('id="problem"') < body.index("Headline")
    assert "Interrupted: 0 of 5 requests have results" in dom and charts(dom) == 0

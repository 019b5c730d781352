"""`batchserve plan`: a small plan end to end, JSON and plot outputs, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from batchserve.entrypoints.cli import main

SMALL = ["plan", "--model", "llama-3.1-8b", "--hardware", "h100-sxm,a100-80gb", "--tp", "1,2", "--pp", "1",
         "--weight-dtype", "bf16", "--max-num-batched-tokens", "512", "--router", "round-robin",
         "--num-requests", "200", "--workers", "1", "--no-cache", "-q", "--max-gpus", "4"]
PRICES = ["--price", "h100-sxm=4.0,a100=2.2"]


def test_plan_writes_json_and_plot(tmp_path, capsys) -> None:
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    code = main([*SMALL, *PRICES, "--rate", "60", "--slo", "ttft_p90=1s,tpot_p90=60ms", "--json", str(out),
                 "--plot", str(png)])
    assert code == 0
    data = json.loads(out.read_text())
    best = data["best"]
    assert best["hardware"] in ("h100-sxm", "a100-80gb") and best["num_gpus"] <= 4
    assert best["slo"]["ttft_p90"]["margin"] >= 0 and best["slo"]["tpot_p90"]["margin"] >= 0
    assert data["search"]["simulations"] > 0 and data["prices"] == {"h100-sxm": 4.0, "a100-80gb": 2.2}
    assert png.stat().st_size > 0
    assert "best:" in capsys.readouterr().out


def test_infeasible_plan_exits_1_and_names_the_closest(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    assert main([*SMALL, *PRICES, "--rate", "60", "--slo", "tpot_p90=1ms", "--json", str(out)]) == 1
    assert "closest:" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["best"] is None and data["closest"]["slo"]["tpot_p90"]["margin"] < 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*PRICES, "--rate", "10", "--slo", "ttft_p90=2s", "--hardware", "h900"], "unknown hardware 'h900'"),
        ([*PRICES, "--rate", "10", "--slo", "ttft_p95=2s"], "bad SLO part 'ttft_p95=2s'"),
        ([*PRICES, "--rate", "10", "--slo", "ttft_p90=fast"], "bad SLO value"),
        ([*PRICES, "--rate", "10"], "--slo is required"),
        (["--price", "h100-sxm=4.0", "--rate", "10", "--slo", "ttft_p90=2s"], "no price for a100-80gb"),
        (["--price", "h100-sxm=cheap", "--rate", "10", "--slo", "ttft_p90=2s"], "--price: bad part"),
        ([*PRICES, "--slo", "ttft_p90=2s"], "needs a target --rate"),
        ([*PRICES, "--rate", "10", "--slo", "ttft_p90=2s", "--tp", "one"], "--tp 'one'"),
        ([*PRICES, "--rate", "10", "--slo", "ttft_p90=2s", "--max-gpus", "0"], "--max-gpus must be >= 1"),
        ([*PRICES, "--rate", "10", "--slo", "ttft_p90=2s", "--arrival", "offline"], "planning needs timed arrivals"),
    ],
)
def test_bad_input_is_one_line_error(args: list[str], message: str, capsys) -> None:
    assert main([*SMALL, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("batchserve plan: error:") and message in err and "\n" not in err


def test_nothing_fits_says_so(capsys) -> None:
    args = ["plan", "--model", "llama-3.1-405b", "--hardware", "h100-sxm", "--tp", "1,2", "--pp", "1",
            "--price", "h100=4", "--rate", "1", "--slo", "ttft_p90=2s", "--workers", "1", "--no-cache", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nothing fits" in err and "GiB missing per GPU" in err


def test_plan_simulates_speculative_decoding(tmp_path) -> None:
    """The same search with drafts the target mostly accepts: the JSON records them, and TPOT drops."""
    def best(*extra: str) -> dict:
        out = tmp_path / "plan.json"
        assert main(["plan", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--tp", "1", "--pp", "1",
                     "--weight-dtype", "bf16", "--max-num-batched-tokens", "512", "--num-requests", "100",
                     "--workers", "1", "--no-cache", "-q", "--max-gpus", "1", "--rate", "2",
                     "--slo", "tpot_p90=60ms", "--price", "h100-sxm=4", "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())

    plain = best()
    spec = best("--speculative-config", '{"num_speculative_tokens": 4}', "--spec-acceptance-rate", "0.9")
    assert "speculative_config" not in plain
    assert spec["speculative_config"]["num_speculative_tokens"] == 4
    assert spec["spec_acceptance"]["spec_acceptance_rate"] == 0.9
    assert spec["best"]["slo"]["tpot_p90"]["value_s"] < plain["best"]["slo"]["tpot_p90"]["value_s"]

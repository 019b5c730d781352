"""`batchserve bench serve` against a live server, with the simulator's prediction beside it."""

from __future__ import annotations

import json

from batchserve.entrypoints.cli import main


def test_bench_serve_measures_the_workload_and_simulates_it(server, tmp_path, capsys):
    out = tmp_path / "bench.json"
    per_request = tmp_path / "requests.jsonl"
    rc = main(["bench", "serve", "--url", server.url, "--num-requests", "12", "--rate", "40", "--input-len", "16",
               "--output-len", "uniform:4:8", "--slo", "ttft=10s", "--json", str(out), "--per-request",
               str(per_request), "--simulate", "h100-sxm", "--sim-model", "qwen2.5-0.5b"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "measured vs simulated on h100-sxm" in printed
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert result["num_failed"] == 0 and m["num_requests"] == 12
    assert m["total_input_tokens"] == 12 * 16  # token-id prompts: exactly the drawn lengths
    assert 12 * 4 <= m["total_output_tokens"] <= 12 * 8  # ignore_eos: every output runs to its drawn length
    assert m["slo_attainment"] == 1.0 and m["goodput"] > 0
    assert m["ttft_s"]["p50"] > 0 and m["itl_s"]["p50"] > 0 and m["tpot_s"]["p50"] > 0
    sim = result["simulated"]["metrics"]
    assert sim["num_requests"] == 12 and sim["total_input_tokens"] == m["total_input_tokens"]
    assert sim["total_output_tokens"] == m["total_output_tokens"]  # the same workload on both sides
    records = [json.loads(line) for line in per_request.read_text().splitlines()]
    assert len(records) == 12 and all(r["ttft_s"] <= r["e2e_s"] for r in records)


def test_bench_serve_counts_rejected_requests(start_server, capsys):
    with start_server(max_waiting=1, max_num_seqs=1) as server:
        rc = main(["bench", "serve", "--url", server.url, "--num-requests", "10", "--input-len", "8",
                   "--output-len", "200"])  # no rate: all at once, far beyond one waiting slot
    assert rc == 0
    printed = capsys.readouterr().out
    assert "failed requests:" in printed and "HTTP 429" in printed


def test_bench_serve_says_when_the_server_is_unreachable(capsys):
    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", "--num-requests", "1"]) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err

"""validate's comparison says which figures test the cost model."""

from __future__ import annotations

from batchserve.calibration.validate import compare, format_comparison, is_offline, is_saturated
from batchserve.metrics import RequestRecord, summarize


def _records(arrivals: list[float], latency: float) -> list[RequestRecord]:
    return [RequestRecord(f"r{i}", 0, t, t, t + latency / 4, t + latency, 16, 8, 0, 0, "length")
            for i, t in enumerate(arrivals)]


def test_open_loop_throughput_is_marked_arrival_bound_and_latencies_are_tests() -> None:
    arrivals = [float(i) for i in range(20)]  # 1 req/s, far below what either side could serve
    real, sim = _records(arrivals, 0.5), _records(arrivals, 0.4)
    assert not is_offline(real) and not is_saturated(real)
    rows = compare(summarize(real), summarize(sim), saturated=False)
    assert not rows["throughput"]["informative"] and not rows["request_throughput"]["informative"]
    assert abs(rows["throughput"]["error"]) < 0.01  # agreement by construction, whatever the latencies
    assert rows["ttft_p50"]["informative"] and abs(rows["ttft_p50"]["error"] - (0.4 / 0.5 - 1)) < 1e-9
    assert abs(rows["e2e_mean"]["error"] - (0.4 / 0.5 - 1)) < 1e-9
    text = format_comparison(rows)
    assert "(" in text.splitlines()[1] and "arrival rate" in text


def test_an_offline_run_tests_throughput_too() -> None:
    real, sim = _records([0.0] * 20, 2.0), _records([0.0] * 20, 1.0)
    assert is_offline(real) and is_saturated(real)
    rows = compare(summarize(real), summarize(sim), saturated=True)
    assert all(r["informative"] for r in rows.values())
    assert abs(rows["throughput"]["error"] - 1.0) < 1e-9  # twice as fast predicted
    assert "arrival rate" not in format_comparison(rows)


def test_an_open_loop_run_the_engine_fell_behind_tests_throughput() -> None:
    """Arrivals at 1 req/s that take 5 s each to serve one at a time: requests finish far later than they arrive."""
    arrivals = [float(i) for i in range(20)]
    real = [RequestRecord(f"r{i}", 0, t, 5.0 * i, 5.0 * i + 1, 5.0 * (i + 1), 16, 8, 0, 0, "length")
            for i, t in enumerate(arrivals)]
    assert not is_offline(real) and is_saturated(real)
    assert not is_saturated(_records(arrivals, 0.5))

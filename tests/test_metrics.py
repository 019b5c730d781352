"""Tests for batchserve.metrics and batchserve.plots: hand-computed oracles first, numpy second."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.metrics import (
    SLO,
    RequestRecord,
    format_table,
    read_per_request,
    summarize,
    timeseries,
    write_per_request,
)
from batchserve.request import Request, RequestStatus, SamplingParams

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def rec(
    rid: str = "r",
    arrival: float = 0.0,
    sched: float | None = None,
    first: float = 1.0,
    finish: float = 2.0,
    prompt: int = 10,
    out: int = 2,
    cached: int = 0,
    preempt: int = 0,
    reason: str = "length",
    token_times: list[float] | None = None,
    replica: int = 0,
) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        replica=replica,
        arrival_time=arrival,
        first_scheduled_time=arrival if sched is None else sched,
        first_token_time=first,
        finish_time=finish,
        num_prompt_tokens=prompt,
        num_output_tokens=out,
        num_cached_tokens=cached,
        num_preemptions=preempt,
        finish_reason=reason,
        token_times=token_times,
    )


# Three requests with dyadic times so every derived value is exact in binary floating point.
#   id  arrival sched first finish prompt out cached preempt
#   a     0.0    0.5   1.0   3.0     100   5    50     0     ttft 1.0  tpot 0.5   e2e 3.0  queue 0.5
#   b     1.0    1.0   1.5   2.0      60   1     0     1     ttft 0.5  tpot None  e2e 1.0  queue 0.0
#   c     2.0    2.25  3.0   8.0      40   3    10     2     ttft 1.0  tpot 2.5   e2e 6.0  queue 0.25
HAND = [
    rec("a", 0.0, 0.5, 1.0, 3.0, prompt=100, out=5, cached=50, preempt=0, reason="stop"),
    rec("b", 1.0, 1.0, 1.5, 2.0, prompt=60, out=1, cached=0, preempt=1, reason="length"),
    rec("c", 2.0, 2.25, 3.0, 8.0, prompt=40, out=3, cached=10, preempt=2, reason="stop"),
]


def random_records(n: int, seed: int = 0, with_token_times: bool = False) -> list[RequestRecord]:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.1, n))
    queue = rng.exponential(0.2, n)
    prefill = rng.uniform(0.01, 0.3, n)
    out = rng.integers(1, 200, n)
    tpot = rng.uniform(0.01, 0.05, n)
    prompt = rng.integers(1, 2000, n)
    recs = []
    for i in range(n):
        sched = arrival[i] + queue[i]
        first = sched + prefill[i]
        finish = first + tpot[i] * (out[i] - 1)
        tt = None
        if with_token_times:
            gaps = rng.exponential(tpot[i], out[i] - 1)
            tt = list(first + np.concatenate([[0.0], np.cumsum(gaps)]))
            finish = tt[-1]
        recs.append(
            RequestRecord(
                request_id=f"req-{i}",
                replica=i % 2,
                arrival_time=float(arrival[i]),
                first_scheduled_time=float(sched),
                first_token_time=float(first),
                finish_time=float(finish),
                num_prompt_tokens=int(prompt[i]),
                num_output_tokens=int(out[i]),
                num_cached_tokens=int(rng.integers(0, prompt[i] + 1)),
                num_preemptions=int(rng.integers(0, 3)),
                finish_reason="length",
                token_times=tt,
            )
        )
    return recs


# ---------------------------------------------------------------- RequestRecord


def test_derived_metrics_exact() -> None:
    a, b, c = HAND
    assert (a.ttft_s, a.e2e_s, a.queue_s, a.tpot_s) == (1.0, 3.0, 0.5, 0.5)
    assert (b.ttft_s, b.e2e_s, b.queue_s, b.tpot_s) == (0.5, 1.0, 0.0, None)
    assert (c.ttft_s, c.e2e_s, c.queue_s, c.tpot_s) == (1.0, 6.0, 0.25, 2.5)


def test_tpot_none_for_one_token_and_zero_token_outputs() -> None:
    assert rec(out=1).tpot_s is None
    assert rec(out=0).tpot_s is None
    assert rec(first=1.0, finish=2.0, out=2).tpot_s == 1.0


def test_record_uses_slots() -> None:
    r = rec()
    assert not hasattr(r, "__dict__")
    with pytest.raises(AttributeError):
        r.extra = 1  # type: ignore[attr-defined]


def test_from_request_copies_timings() -> None:
    req = Request("req-7", [1, 2, 3, 4], SamplingParams(max_tokens=3), arrival_time=1.0)
    req.output_token_ids = [5, 6, 7]
    req.status = RequestStatus.FINISHED_LENGTH
    req.first_scheduled_time, req.first_token_time = 1.25, 1.5
    req.finish_time = 2.5
    req.num_cached_tokens, req.num_preemptions = 2, 1
    req.token_times = [1.5, 2.0, 2.5]
    r = RequestRecord.from_request(req, replica=3)
    assert (r.request_id, r.replica, r.finish_reason) == ("req-7", 3, "length")
    assert (r.arrival_time, r.first_scheduled_time, r.first_token_time, r.finish_time) == (1.0, 1.25, 1.5, 2.5)
    assert (r.num_prompt_tokens, r.num_output_tokens, r.num_cached_tokens, r.num_preemptions) == (4, 3, 2, 1)
    assert r.token_times == [1.5, 2.0, 2.5] and r.token_times is not req.token_times
    assert (r.ttft_s, r.tpot_s, r.e2e_s, r.queue_s) == (0.5, 0.5, 1.5, 0.25)


def test_from_request_aborted_while_waiting_gets_nan_and_strict_json() -> None:
    req = Request("x", [1], SamplingParams(), arrival_time=0.0)
    req.status = RequestStatus.FINISHED_ABORTED
    req.finish_time = 4.0
    r = RequestRecord.from_request(req)
    assert r.finish_reason == "abort"
    assert math.isnan(r.first_scheduled_time) and math.isnan(r.ttft_s)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["ttft_s"] is None and d["queue_s"] is None and d["first_token_time"] is None
    assert d["e2e_s"] == 4.0


def test_from_request_rejects_unfinished() -> None:
    req = Request("y", [1], SamplingParams())
    with pytest.raises(ValueError, match="has no finish_time"):
        RequestRecord.from_request(req)


def test_to_dict_has_derived_and_token_times_only_when_present() -> None:
    d = HAND[0].to_dict()
    assert d["ttft_s"] == 1.0 and d["tpot_s"] == 0.5 and d["e2e_s"] == 3.0 and d["queue_s"] == 0.5
    assert "token_times" not in d
    assert HAND[1].to_dict()["tpot_s"] is None
    d2 = rec(out=2, token_times=[1.0, 2.0]).to_dict()
    assert d2["token_times"] == [1.0, 2.0]
    json.dumps(d2, allow_nan=False)


# ---------------------------------------------------------------- summarize


def test_summarize_hand_computed() -> None:
    s = summarize(HAND)
    assert s["num_requests"] == 3
    assert s["duration_s"] == 8.0  # first arrival 0 -> last finish 8
    assert s["request_throughput"] == 3 / 8
    assert s["input_token_throughput"] == 200 / 8
    assert s["output_token_throughput"] == 9 / 8
    assert s["total_token_throughput"] == 209 / 8
    assert s["total_input_tokens"] == 200 and s["total_output_tokens"] == 9
    assert s["num_preemptions"] == 3
    assert s["prefix_cache_hit_rate"] == 60 / 200
    assert s["finish_reasons"] == {"stop": 2, "length": 1}
    # TTFT values [1.0, 0.5, 1.0]: sorted [0.5, 1, 1]; p50 = 1.0, p90 = 1.0, mean = 2.5/3
    assert s["ttft_s"]["p50"] == 1.0 and s["ttft_s"]["max"] == 1.0
    assert s["ttft_s"]["mean"] == pytest.approx(2.5 / 3)
    # TPOT only over a and c: [0.5, 2.5]; linear interpolation p90 = 0.5 + 0.9*2 = 2.3
    assert s["tpot_s"]["mean"] == 1.5 and s["tpot_s"]["p50"] == 1.5
    assert s["tpot_s"]["p90"] == pytest.approx(2.3) and s["tpot_s"]["max"] == 2.5
    # E2E [3, 1, 6]: p50 3, p99 = 3 + 0.98*3
    assert s["e2e_s"]["p50"] == 3.0 and s["e2e_s"]["p99"] == pytest.approx(5.94)
    # queue [0.5, 0, 0.25]
    assert s["queue_s"]["mean"] == 0.25 and s["queue_s"]["p50"] == 0.25 and s["queue_s"]["max"] == 0.5
    assert "itl_s" not in s and "slo" not in s and "goodput" not in s
    json.dumps(s, allow_nan=False)


def test_percentiles_match_numpy() -> None:
    recs = random_records(500, seed=1)
    s = summarize(recs)
    ttft = np.array([r.ttft_s for r in recs])
    e2e = np.array([r.e2e_s for r in recs])
    queue = np.array([r.queue_s for r in recs])
    tpot = np.array([r.tpot_s for r in recs if r.tpot_s is not None])
    assert tpot.size < len(recs)  # some 1-token outputs were excluded
    for key, x in (("ttft_s", ttft), ("e2e_s", e2e), ("queue_s", queue), ("tpot_s", tpot)):
        stats = s[key]
        assert stats["mean"] == pytest.approx(x.mean(), rel=1e-12)
        assert stats["max"] == x.max()
        for p in (50, 90, 99):
            assert stats[f"p{p}"] == pytest.approx(np.percentile(x, p), rel=1e-12)


def test_tpot_stats_none_when_every_output_is_one_token() -> None:
    s = summarize([rec(out=1), rec(out=1, finish=3.0)])
    assert s["tpot_s"] == {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    assert "-" in format_table(s).split("TPOT")[1].splitlines()[0]


def test_itl_from_token_times_excludes_cross_request_gaps() -> None:
    recs = [
        rec("a", 0.0, first=1.0, finish=2.0, out=3, token_times=[1.0, 1.25, 2.0]),  # gaps 0.25, 0.75
        rec("b", 0.0, first=5.0, finish=5.5, out=2, token_times=[5.0, 5.5]),  # gap 0.5
        rec("c", 0.0, first=9.0, finish=9.0, out=1, token_times=[9.0]),  # no gap
        rec("d", 0.0, first=3.0, finish=4.0, out=2),  # untracked: contributes nothing to ITL
    ]
    s = summarize(recs)
    assert s["itl_s"]["mean"] == pytest.approx(0.5)
    assert s["itl_s"]["p50"] == 0.5 and s["itl_s"]["max"] == 0.75
    assert s["itl_s"]["p90"] == pytest.approx(np.percentile([0.25, 0.75, 0.5], 90))


def test_itl_pooled_matches_per_request_diffs() -> None:
    recs = random_records(200, seed=2, with_token_times=True)
    gaps = np.concatenate([np.diff(r.token_times) for r in recs])
    s = summarize(recs)
    assert s["itl_s"]["mean"] == pytest.approx(gaps.mean(), rel=1e-12)
    assert s["itl_s"]["p99"] == pytest.approx(np.percentile(gaps, 99), rel=1e-12)


def test_summarize_empty_raises() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_zero_duration_rates_are_none() -> None:
    s = summarize([rec(arrival=1.0, first=1.0, finish=1.0, out=1)])
    assert s["duration_s"] == 0.0 and s["request_throughput"] is None
    json.dumps(s, allow_nan=False)
    format_table(s)


def test_aborted_record_excluded_from_latency_but_counted() -> None:
    nan = float("nan")
    aborted = rec("x", 0.0, sched=nan, first=nan, finish=10.0, out=0, reason="abort")
    s = summarize([HAND[0], aborted], slo=SLO(e2e_s=100.0))
    assert s["num_requests"] == 2 and s["duration_s"] == 10.0
    assert s["ttft_s"]["max"] == 1.0 and s["queue_s"]["max"] == 0.5  # NaNs dropped
    assert s["e2e_s"]["max"] == 10.0
    assert s["slo_attainment"] == 0.5  # an aborted request never meets the SLO
    json.dumps(s, allow_nan=False)


def test_summarize_100k_records_runs() -> None:
    rng = np.random.default_rng(3)
    n = 100_000
    arrival = np.cumsum(rng.exponential(0.01, n)).tolist()
    out = rng.integers(1, 500, n).tolist()
    recs = [
        RequestRecord(f"{i}", 0, t, t + 0.1, t + 0.2, t + 0.2 + 0.02 * o, 500, o, 100, 0, "stop")
        for i, (t, o) in enumerate(zip(arrival, out))
    ]
    s = summarize(recs, slo=SLO(ttft_s=1.0))
    assert s["num_requests"] == n and s["slo_attainment"] == 1.0
    assert s["total_output_tokens"] == sum(out)
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.2)
    ts = timeseries(recs)
    assert ts["time_s"].size == 200


# ---------------------------------------------------------------- SLO / goodput


def test_slo_parse_examples() -> None:
    assert SLO.parse("ttft=2s,tpot=100ms") == SLO(ttft_s=2.0, tpot_s=0.1)
    assert SLO.parse("e2e=30") == SLO(e2e_s=30.0)
    assert SLO.parse(" TTFT = 500ms , e2e=1.5s ") == SLO(ttft_s=0.5, e2e_s=1.5)
    assert SLO.parse("tpot=2.5e-2s").tpot_s == pytest.approx(0.025)
    assert SLO.parse("ttft=2s,tpot=100ms").to_dict() == {"ttft_s": 2.0, "tpot_s": 0.1, "e2e_s": None}


@pytest.mark.parametrize(
    ("spec", "bad_part"),
    [
        ("", "empty"),
        ("ttft", "'ttft'"),
        ("ttft=", "'ttft='"),
        ("ttft=2x", "'ttft=2x'"),
        ("ttft=fast", "'ttft=fast'"),
        ("itl=50ms", "'itl=50ms'"),
        ("p99_ttft=2s", "'p99_ttft=2s'"),
        ("ttft=0", "'ttft=0'"),
        ("ttft=-1s", "'ttft=-1s'"),
        ("ttft=nan", "'ttft=nan'"),
        ("ttft=1s,,e2e=3", "''"),
        ("ttft=1,ttft=2", "'ttft' given twice"),
    ],
)
def test_slo_parse_rejects_bad_specs(spec: str, bad_part: str) -> None:
    with pytest.raises(ValueError) as exc:
        SLO.parse(spec)
    msg = str(exc.value)
    assert bad_part in msg
    assert "ttft=2s,tpot=100ms" in msg  # the accepted form is shown


def test_slo_constructor_validates() -> None:
    with pytest.raises(ValueError, match="positive"):
        SLO(ttft_s=-1.0)


def test_met_by_and_goodput_by_hand() -> None:
    slo = SLO(ttft_s=1.0, tpot_s=1.0)
    # a: ttft 1.0 (== target, inclusive), tpot 0.5 -> met
    # b: ttft 0.5, 1 output token so TPOT is not checked -> met
    # c: ttft 1.0, tpot 2.5 -> missed on TPOT
    # d: ttft 1.5 -> missed on TTFT
    d = rec("d", 3.0, first=4.5, finish=5.0, out=2)
    recs = [*HAND, d]
    assert [slo.met_by(r) for r in recs] == [True, True, False, False]
    s = summarize(recs, slo=slo)
    assert s["slo"] == {"ttft_s": 1.0, "tpot_s": 1.0, "e2e_s": None}
    assert s["slo_attainment"] == 0.5
    assert s["goodput"] == 2 / 8  # duration 0 -> 8
    # E2E target alone: e2e [3, 1, 6, 2] vs 2.0 -> b, d met
    s2 = summarize(recs, slo=SLO(e2e_s=2.0))
    assert s2["slo_attainment"] == 0.5 and s2["goodput"] == 2 / 8
    assert [SLO(e2e_s=2.0).met_by(r) for r in recs] == [False, True, False, True]


def test_summarize_attainment_agrees_with_met_by() -> None:
    recs = random_records(400, seed=4)
    for slo in (SLO(ttft_s=0.3), SLO(tpot_s=0.03), SLO(ttft_s=0.4, tpot_s=0.04, e2e_s=3.0)):
        s = summarize(recs, slo=slo)
        assert s["slo_attainment"] == sum(slo.met_by(r) for r in recs) / len(recs)


# ---------------------------------------------------------------- format_table


def test_format_table_rows_and_values() -> None:
    recs = [*HAND[:2], rec("t", 0.0, first=1.0, finish=2.0, out=3, token_times=[1.0, 1.5, 2.0])]
    s = summarize(recs, slo=SLO.parse("ttft=2s,tpot=100ms"))
    table = format_table(s, title="my run")
    lines = table.splitlines()
    assert "my run" in lines[0]
    for label in ("TTFT", "TPOT", "ITL", "E2E", "queue"):
        assert any(line.startswith(label) for line in lines), label
    for text in ("Request throughput", "Output token throughput", "Preemptions", "Prefix cache hit rate",
                 "SLO attainment", "Goodput", "ttft<=2s", "tpot<=100ms"):
        assert text in table, text
    ttft_row = next(line for line in lines if line.startswith("TTFT"))
    assert ttft_row.split()[1:] == ["833.33", "1000.00", "1000.00", "1000.00", "1000.00"]  # ms
    itl_row = next(line for line in lines if line.startswith("ITL"))
    assert itl_row.split()[1] == "500.00"
    assert len({len(line) for line in lines}) == 1  # aligned: every line the same width


def test_format_table_omits_itl_and_slo_when_absent() -> None:
    table = format_table(summarize(HAND))
    assert not any(line.startswith("ITL") for line in table.splitlines())
    assert "Goodput" not in table and "SLO" not in table
    assert "30.00%" in table  # prefix cache hit rate 60/200


# ---------------------------------------------------------------- per-request JSONL


def test_per_request_jsonl_round_trip(tmp_path) -> None:
    nan = float("nan")
    recs = [
        *HAND,
        rec("tt", 0.1, first=0.3, finish=0.7, out=3, token_times=[0.3, 0.5 + 1e-9, 0.7], replica=2),
        rec("ab", 0.0, sched=nan, first=nan, finish=1.0, out=0, reason="abort"),
    ]
    path = tmp_path / "sub" / "requests.jsonl"
    write_per_request(iter(recs), path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(recs)
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in recs]
    back = read_per_request(path)
    assert [r.request_id for r in back] == [r.request_id for r in recs]
    for a, b in zip(recs[:4], back[:4]):
        assert a == b  # exact floats survive JSON
    assert math.isnan(back[4].first_token_time) and back[4].finish_reason == "abort"
    assert summarize(back) == summarize(recs)


# ---------------------------------------------------------------- timeseries


def test_timeseries_hand_case_counts_and_throughput() -> None:
    # bin_s = 1, duration 0..4 -> bins start at 0, 1, 2, 3
    recs = [
        # waiting [0, 1.5), running [1.5, 3.5); 3 tokens: 2.0, then 2 spread over [2, 3] -> 1.0 in bin 2
        rec("a", 0.0, sched=1.5, first=2.0, finish=3.0, out=3),
        # waiting [0.5, 2.5) running [2.5, 4); tokens tracked explicitly
        rec("b", 0.5, sched=2.5, first=3.0, finish=4.0, out=2, token_times=[3.0, 3.5]),
        # waiting [1, 3), running [3, 3.5); one token at 3.25
        rec("c", 1.0, sched=3.0, first=3.25, finish=3.5, out=1),
    ]
    ts = timeseries(recs, bin_s=1.0)
    np.testing.assert_array_equal(ts["time_s"], [0.0, 1.0, 2.0, 3.0])
    # t=1: c arrives exactly then and counts; t=3: a finishes and c is scheduled exactly then
    np.testing.assert_array_equal(ts["num_waiting"], [1, 3, 2, 0])
    np.testing.assert_array_equal(ts["num_running"], [0, 0, 1, 2])
    # a: token at 2.0 (bin 2) + 2 tokens uniformly over [2,3] (bin 2); b: 3.0, 3.5 (bin 3); c: 3.25 (bin 3)
    np.testing.assert_allclose(ts["output_token_throughput"], [0.0, 0.0, 3.0, 3.0])


def test_timeseries_uniform_spread_partial_bins() -> None:
    # 1 + 4 tokens: first at 0.5, the other 4 spread over [0.5, 2.5] -> rate 2 tok/s
    ts = timeseries([rec("a", 0.0, first=0.5, finish=2.5, out=5), rec("z", 0.0, first=3.0, finish=3.0, out=0)],
                    bin_s=1.0)
    np.testing.assert_allclose(ts["output_token_throughput"], [1 + 1.0, 2.0, 1.0])


def test_timeseries_default_bins_and_bad_bin() -> None:
    ts = timeseries(HAND)
    assert ts["time_s"].size == 200
    assert ts["time_s"][1] - ts["time_s"][0] == pytest.approx(8.0 / 200)
    with pytest.raises(ValueError, match="bin_s"):
        timeseries(HAND, bin_s=0)
    with pytest.raises(ValueError, match="at least one"):
        timeseries([])


@pytest.mark.parametrize("tracked", [False, True])
@pytest.mark.parametrize("bin_s", [None, 0.037, 1.0, 100.0])
def test_timeseries_conserves_output_tokens(tracked: bool, bin_s: float | None) -> None:
    recs = random_records(300, seed=5, with_token_times=tracked)
    ts = timeseries(recs, bin_s=bin_s)
    width = ts["time_s"][1] - ts["time_s"][0] if ts["time_s"].size > 1 else bin_s
    total = sum(r.num_output_tokens for r in recs)
    assert (ts["output_token_throughput"] * width).sum() == pytest.approx(total, rel=1e-9)
    assert (ts["output_token_throughput"] >= 0).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 100), st.floats(0, 10), st.floats(0, 10), st.floats(0, 50), st.integers(0, 300)
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(0.01, 20),
)
def test_timeseries_conservation_property(rows, bin_s: float) -> None:
    recs = []
    for i, (arr, q, pre, dec, out) in enumerate(rows):
        sched = arr + q
        first = sched + pre
        recs.append(rec(str(i), arr, sched=sched, first=first, finish=first + dec, out=out))
    ts = timeseries(recs, bin_s=bin_s)
    total = sum(r.num_output_tokens for r in recs)
    assert (ts["output_token_throughput"] * bin_s).sum() == pytest.approx(total, rel=1e-9, abs=1e-9)
    # at every bin start each request is in at most one of waiting/running
    assert ((ts["num_waiting"] >= 0) & (ts["num_running"] >= 0)).all()
    assert (ts["num_waiting"] + ts["num_running"] <= len(recs)).all()


# ---------------------------------------------------------------- plots


def test_importing_plots_does_not_import_matplotlib() -> None:
    # a fresh interpreter, so other tests' imports cannot hide an eager import
    code = "import sys, batchserve.metrics, batchserve.plots; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}).returncode == 0


def test_plot_run_writes_png(tmp_path) -> None:
    recs = random_records(300, seed=6, with_token_times=True)
    path = tmp_path / "out" / "run.png"
    from batchserve.plots import plot_run

    plot_run(recs, summarize(recs, slo=SLO(ttft_s=0.5, tpot_s=0.05)), path, title="test run")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_run_handles_one_token_outputs_and_zero_latency(tmp_path) -> None:
    recs = [rec("a", 0.0, first=0.0, finish=0.0, out=1)]
    path = tmp_path / "tiny.png"
    from batchserve.plots import plot_run

    plot_run(recs, summarize(recs), path)
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_sweep_writes_png(tmp_path) -> None:
    from batchserve.plots import plot_sweep

    slo = SLO(ttft_s=0.5, tpot_s=0.04)
    points = [(rate, summarize(random_records(100, seed=int(rate * 10)), slo=slo)) for rate in (8.0, 1.0, 4.0, 2.0)]
    points.append((math.inf, summarize(random_records(100, seed=99))))
    path = tmp_path / "sweep.png"
    plot_sweep(points, path, title="sweep")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    with pytest.raises(ValueError):
        plot_sweep([], tmp_path / "empty.png")

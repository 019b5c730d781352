"""Tests for batchserve.workload: length specs, synthetic streams, trace replay."""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.request import Request
from batchserve.workload import LengthDist, WorkloadError, WorkloadSpec, synthetic_requests, trace_requests


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def cv(x: np.ndarray) -> float:
    return float(np.std(x) / np.mean(x))


def gaps(spec: WorkloadSpec) -> np.ndarray:
    return np.diff([r.arrival_time for r in synthetic_requests(spec)])


def fingerprint(reqs) -> list[tuple]:
    return [(r.request_id, r.prompt_token_ids, r.sampling_params.max_tokens,
             r.sampling_params.ignore_eos, r.arrival_time, r.priority) for r in reqs]


def common_prefix_len(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --------------------------------------------------------------------------- LengthDist


@pytest.mark.parametrize("spec, kind, params, canonical", [
    ("512", "fixed", (512,), "fixed:512"),
    (" fixed:512 ", "fixed", (512,), "fixed:512"),
    ("uniform:100:900", "uniform", (100, 900), "uniform:100:900"),
    ("lognormal:512:0.8", "lognormal", (512.0, 0.8), "lognormal:512:0.8"),
    ("LogNormal:100.5:0", "lognormal", (100.5, 0.0), "lognormal:100.5:0"),
])
def test_parse_forms_and_canonical_string(spec, kind, params, canonical):
    d = LengthDist.parse(spec)
    assert (d.kind, d.params, str(d)) == (kind, params, canonical)
    assert LengthDist.parse(str(d)) == d


@pytest.mark.parametrize("spec", [
    "", "  ", "abc", "fixed:", "fixed:0", "fixed:-3", "fixed:1.5", "0", "uniform:900:100",
    "uniform:0:10", "uniform:1", "uniform:1:2:3", "lognormal:512", "lognormal:-1:0.8",
    "lognormal:0:0.8", "lognormal:512:-0.1", "lognormal:nan:1", "lognormal:inf:1", "lognormal:x:1",
    "empirical:", "weird:1:2",
])
def test_parse_rejects_bad_specs_listing_accepted_forms(spec):
    with pytest.raises(WorkloadError, match="accepted forms: N, fixed:N, uniform:LO:HI, lognormal:MEAN:SIGMA"):
        LengthDist.parse(spec)


def test_lognormal_mean_is_the_declared_mean_and_sigma_is_the_log_sigma():
    d = LengthDist.parse("lognormal:512:0.8")
    x = d.sample(rng(), 200_000)
    assert x.dtype == np.int64 and x.min() >= 1
    assert d.mean() == 512.0
    assert abs(x.mean() / 512 - 1) < 0.02
    # median of a lognormal is exp(mu) = mean * exp(-sigma^2 / 2)
    assert abs(np.median(x) / (512 * math.exp(-0.32)) - 1) < 0.02
    assert abs(np.log(x).std() - 0.8) < 0.02


def test_lognormal_rounds_to_nearest_so_small_means_stay_unbiased():
    x = LengthDist.parse("lognormal:3:0.5").sample(rng(), 200_000)
    assert abs(x.mean() / 3 - 1) < 0.01  # truncating instead would give ~2.5


def test_lognormal_clips_small_values_at_one():
    x = LengthDist.parse("lognormal:1:2").sample(rng(), 50_000)
    assert x.min() == 1 and (x == 1).mean() > 0.3


def test_uniform_is_inclusive_and_flat():
    d = LengthDist.parse("uniform:3:7")
    x = d.sample(rng(), 100_000)
    assert d.mean() == 5.0
    counts = np.bincount(x, minlength=9)
    assert counts[:3].sum() == 0 and counts[8:].sum() == 0
    assert np.all(np.abs(counts[3:8] / 20_000 - 1) < 0.05)


def test_fixed_is_constant():
    d = LengthDist.parse("fixed:42")
    assert d.mean() == 42.0
    x = d.sample(rng(), 1000)
    assert x.dtype == np.int64 and np.all(x == 42)


@pytest.mark.parametrize("content", ["10\n20\n\n20\n50\n", "[10, 20, 20, 50]"])
def test_empirical_draws_uniformly_from_listed_values(tmp_path, content):
    path = tmp_path / "lens.txt"
    path.write_text(content)
    d = LengthDist.parse(f"empirical:{path}")
    assert d.params == ((10, 20, 20, 50),)
    assert str(d) == f"empirical:{path}" and LengthDist.parse(str(d)) == d
    assert d.mean() == 25.0
    x = d.sample(rng(), 40_000)
    assert set(x.tolist()) == {10, 20, 50}
    assert abs((x == 20).mean() - 0.5) < 0.02 and abs((x == 50).mean() - 0.25) < 0.02


@pytest.mark.parametrize("content, fragment", [
    ("10\nabc\n", "line 2: 'abc' is not a positive integer"),
    ("10\n\n0\n", "line 3: '0' is not a positive integer"),
    ("", "no lengths found"),
    ("\n \n", "no lengths found"),
    ("[1, 2.5]", "element 1 is 2.5"),
    ("[1, true]", "element 1 is True"),
    ("[]", "no lengths found"),
    ("[1,\n 2", "line 2: not valid JSON"),
])
def test_empirical_file_errors_name_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "lens.txt"
    path.write_text(content)
    with pytest.raises(WorkloadError, match="lens.txt") as e:
        LengthDist.parse(f"empirical:{path}")
    assert fragment in str(e.value)


def test_empirical_missing_file(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        LengthDist.parse(f"empirical:{tmp_path / 'nope.txt'}")


def test_direct_construction_is_validated():
    with pytest.raises(WorkloadError):
        LengthDist("fixed", (0,))
    with pytest.raises(WorkloadError, match="unknown length kind"):
        LengthDist("zipf", (1,))


length_specs = st.one_of(
    st.integers(1, 10**6).map(str),
    st.integers(1, 10**6).map(lambda n: f"fixed:{n}"),
    st.tuples(st.integers(1, 5000), st.integers(0, 5000)).map(lambda t: f"uniform:{t[0]}:{t[0] + t[1]}"),
    st.tuples(st.floats(0.01, 1e5), st.floats(0, 3)).map(lambda t: f"lognormal:{t[0]!r}:{t[1]!r}"),
)


@settings(max_examples=60, deadline=None)
@given(spec=length_specs, seed=st.integers(0, 2**32))
def test_any_valid_spec_round_trips_and_samples_positive_int64(spec, seed):
    d = LengthDist.parse(spec)
    assert LengthDist.parse(str(d)) == d
    x = d.sample(rng(seed), 200)
    assert x.dtype == np.int64 and x.shape == (200,) and x.min() >= 1
    if d.kind == "uniform":
        assert d.params[0] <= x.min() and x.max() <= d.params[1]


# --------------------------------------------------------------------------- WorkloadSpec


def test_default_spec_is_offline_and_to_dict_is_json():
    spec = WorkloadSpec()
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["arrival"] == "offline" and d["rate"] is None
    assert d["input_len"] == "lognormal:512:0.8" and d["output_len"] == "lognormal:256:0.8"


def test_to_dict_canonicalises_lengths_and_round_trips():
    spec = WorkloadSpec(rate=5, arrival="gamma", burstiness_cv=2.0, input_len="128",
                        output_len="uniform:1:64", num_prefix_groups=3, prefix_len=32, seed=9)
    d = spec.to_dict()
    assert d == {"num_requests": 1000, "rate": 5, "arrival": "gamma", "burstiness_cv": 2.0,
                 "input_len": "fixed:128", "output_len": "uniform:1:64", "num_prefix_groups": 3,
                 "prefix_len": 32, "num_adapters": 0, "adapter_zipf_exponent": 1.0,
                 "vocab_size": 32000, "seed": 9}
    assert WorkloadSpec(**d).to_dict() == d


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(num_requests=0), "num_requests"),
    (dict(num_requests=2.5), "num_requests"),
    (dict(rate=0), "rate"),
    (dict(rate=-1.0), "rate"),
    (dict(rate=float("inf")), "rate"),
    (dict(rate=1.0, arrival="uniform"), "unknown arrival 'uniform'"),
    (dict(arrival="gamma"), "needs a rate"),
    (dict(arrival="offline", rate=2.0), "offline"),
    (dict(rate=1.0, arrival="gamma", burstiness_cv=0), "burstiness_cv"),
    (dict(num_prefix_groups=4), "both"),
    (dict(prefix_len=16), "both"),
    (dict(num_prefix_groups=-1, prefix_len=-1), "num_prefix_groups"),
    (dict(input_len="bogus"), "input_len: bad length spec 'bogus'"),
    (dict(output_len="fixed:0"), "output_len: bad length spec"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(seed=-1), "seed"),
    (dict(num_adapters=-1), "num_adapters"),
    (dict(num_adapters=4, adapter_zipf_exponent=-0.5), "adapter_zipf_exponent must be a number >= 0"),
])
def test_spec_validation(kwargs, fragment):
    with pytest.raises(WorkloadError) as e:
        WorkloadSpec(**kwargs)
    assert fragment in str(e.value)


# --------------------------------------------------------------------------- synthetic_requests


@pytest.mark.parametrize("exponent", [0.0, 1.0, 1.5])
def test_adapters_are_drawn_with_zipf_popularity(exponent):
    spec = WorkloadSpec(num_requests=20000, num_adapters=5, adapter_zipf_exponent=exponent, seed=1)
    ids = np.array([r.adapter_id for r in synthetic_requests(spec)])
    assert set(ids.tolist()) == {1, 2, 3, 4, 5}
    want = np.arange(1, 6, dtype=float) ** -exponent
    freq = np.bincount(ids, minlength=6)[1:] / len(ids)
    np.testing.assert_allclose(freq, want / want.sum(), atol=0.01)


def test_drawing_adapters_leaves_every_other_draw_unchanged():
    plain = list(synthetic_requests(WorkloadSpec(num_requests=300, rate=5.0, seed=2)))
    tuned = list(synthetic_requests(WorkloadSpec(num_requests=300, rate=5.0, seed=2, num_adapters=3)))
    assert all(r.adapter_id is None for r in plain)
    assert [(r.prompt_token_ids, r.arrival_time, r.sampling_params.max_tokens) for r in plain] == \
        [(r.prompt_token_ids, r.arrival_time, r.sampling_params.max_tokens) for r in tuned]


def test_requests_match_the_spec():
    spec = WorkloadSpec(num_requests=5000, rate=50.0, input_len="uniform:1:40",
                        output_len="lognormal:64:0.5", vocab_size=100, seed=3)
    reqs = list(synthetic_requests(spec))
    assert all(isinstance(r, Request) for r in reqs)
    assert [r.request_id for r in reqs] == [str(i) for i in range(5000)]
    assert reqs[0].arrival_time == 0.0
    times = [r.arrival_time for r in reqs]
    assert times == sorted(times) and all(type(t) is float for t in times)
    lens = np.array([r.num_prompt_tokens for r in reqs])
    assert lens.min() == 1 and lens.max() == 40 and abs(lens.mean() - 20.5) < 0.5
    outs = np.array([r.sampling_params.max_tokens for r in reqs])
    assert abs(outs.mean() / 64 - 1) < 0.03
    assert all(r.sampling_params.ignore_eos for r in reqs)
    tokens = np.concatenate([r.prompt_token_ids for r in reqs])
    assert tokens.min() == 0 and tokens.max() == 99
    assert all(type(t) is int for t in reqs[0].prompt_token_ids)


def test_poisson_arrivals():
    g = gaps(WorkloadSpec(num_requests=20_000, rate=10.0, input_len="1", output_len="1"))
    assert abs(g.mean() / 0.1 - 1) < 0.03
    assert abs(cv(g) - 1) < 0.03
    assert abs((g > 0.1).mean() - math.exp(-1)) < 0.015  # exponential tail, not just its moments


def test_gamma_arrivals_are_bursty_with_the_requested_cv():
    g = gaps(WorkloadSpec(num_requests=50_000, rate=10.0, arrival="gamma", burstiness_cv=3.0,
                          input_len="1", output_len="1"))
    assert abs(g.mean() / 0.1 - 1) < 0.05
    assert abs(cv(g) - 3) < 0.3


def test_gamma_with_cv_one_looks_poisson():
    g = gaps(WorkloadSpec(num_requests=20_000, rate=4.0, arrival="gamma", input_len="1", output_len="1"))
    assert abs(g.mean() / 0.25 - 1) < 0.03 and abs(cv(g) - 1) < 0.03


@pytest.mark.parametrize("kwargs", [dict(), dict(arrival="offline")])
def test_offline_arrivals_are_all_zero(kwargs):
    reqs = list(synthetic_requests(WorkloadSpec(num_requests=5000, input_len="1", output_len="1", **kwargs)))
    assert len(reqs) == 5000 and all(r.arrival_time == 0.0 for r in reqs)


def test_prefix_groups_share_exactly_the_prefix():
    L, G = 32, 4
    spec = WorkloadSpec(num_requests=400, input_len="uniform:1:20", output_len="1",
                        num_prefix_groups=G, prefix_len=L, vocab_size=2**31 - 1)
    reqs = list(synthetic_requests(spec))
    by_prefix: dict[tuple, list[Request]] = {}
    for r in reqs:
        assert r.num_prompt_tokens >= L + 1
        by_prefix.setdefault(tuple(r.prompt_token_ids[:L]), []).append(r)
    assert len(by_prefix) == G  # every group is used, and groups' prefixes differ
    assert all(abs(len(v) - 100) < 30 for v in by_prefix.values())
    for group in by_prefix.values():
        for a, b in itertools.combinations(group, 2):
            assert common_prefix_len(a.prompt_token_ids, b.prompt_token_ids) == L
    assert len({p[0] for p in by_prefix}) == G  # different groups diverge at token 0


def test_prefix_tokens_are_not_aliased_between_requests():
    a, b = itertools.islice(synthetic_requests(WorkloadSpec(num_requests=2, num_prefix_groups=1, prefix_len=8)), 2)
    a.prompt_token_ids[0] = -1
    assert b.prompt_token_ids[0] != -1


def test_same_seed_same_requests_other_seed_differs():
    spec = WorkloadSpec(num_requests=300, rate=20.0, arrival="gamma", burstiness_cv=2.0,
                        input_len="lognormal:50:0.5", output_len="uniform:1:30",
                        num_prefix_groups=3, prefix_len=10, seed=1)
    first = fingerprint(synthetic_requests(spec))
    assert fingerprint(synthetic_requests(spec)) == first
    other = WorkloadSpec(**{**spec.to_dict(), "seed": 2})
    second = fingerprint(synthetic_requests(other))
    assert [f[1] for f in second] != [f[1] for f in first]
    assert [f[4] for f in second] != [f[4] for f in first]


def test_first_requests_do_not_depend_on_num_requests():
    small = WorkloadSpec(num_requests=10, rate=3.0, input_len="lognormal:30:1", num_prefix_groups=2, prefix_len=5)
    big = WorkloadSpec(**{**small.to_dict(), "num_requests": 9000})
    assert fingerprint(synthetic_requests(small)) == fingerprint(itertools.islice(synthetic_requests(big), 10))


def test_changing_output_len_keeps_arrivals_and_prompts():
    a = WorkloadSpec(num_requests=50, rate=3.0, input_len="lognormal:30:1", output_len="10")
    b = WorkloadSpec(num_requests=50, rate=3.0, input_len="lognormal:30:1", output_len="uniform:1:99")
    fa, fb = fingerprint(synthetic_requests(a)), fingerprint(synthetic_requests(b))
    assert [(f[1], f[4]) for f in fa] == [(f[1], f[4]) for f in fb]


def test_lazy_and_memory_flat():
    spec = WorkloadSpec(num_requests=10**7, rate=1000.0, input_len="512", output_len="128")
    gen = synthetic_requests(spec)
    assert isinstance(gen, types.GeneratorType)
    start = time.perf_counter()
    head = list(itertools.islice(gen, 5))
    assert time.perf_counter() - start < 1.0
    assert [r.request_id for r in head] == ["0", "1", "2", "3", "4"]
    assert [len(r.prompt_token_ids) for r in head] == [512] * 5


def test_memory_stays_flat():
    gen = synthetic_requests(WorkloadSpec(num_requests=10**6, rate=1000.0, input_len="64", output_len="1"))
    tracemalloc.start()
    try:
        for _ in itertools.islice(gen, 6000):  # past the first chunk; nothing is retained
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # keeping 6000 prompts of 64 tokens would take ~14 MiB


def test_synthetic_requests_rejects_non_spec():
    with pytest.raises(TypeError):
        synthetic_requests({"num_requests": 3})


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), rate=st.none() | st.floats(0.1, 1e4), groups=st.integers(0, 3),
       prefix=st.integers(1, 12), vocab=st.integers(1, 50), seed=st.integers(0, 2**32),
       in_spec=st.sampled_from(["1", "uniform:1:9", "lognormal:5:1"]))
def test_stream_invariants(n, rate, groups, prefix, vocab, seed, in_spec):
    spec = WorkloadSpec(num_requests=n, rate=rate, num_prefix_groups=groups, prefix_len=prefix if groups else 0,
                        input_len=in_spec, output_len="lognormal:8:1", vocab_size=vocab, seed=seed)
    reqs = list(synthetic_requests(spec))
    assert [r.request_id for r in reqs] == [str(i) for i in range(n)]
    times = [r.arrival_time for r in reqs]
    assert times == sorted(times) and times[0] == 0.0 and (rate is not None or times[-1] == 0.0)
    assert all(0 <= t < vocab for r in reqs for t in r.prompt_token_ids)
    assert all(r.sampling_params.max_tokens >= 1 for r in reqs)
    shared = spec.prefix_len
    assert all(r.num_prompt_tokens >= shared + 1 for r in reqs)
    assert len({tuple(r.prompt_token_ids[:shared]) for r in reqs}) <= max(groups, 1)


# --------------------------------------------------------------------------- trace_requests


TRACE_ROWS = [
    {"arrival_time": 2.0, "prompt_tokens": 40, "output_tokens": 5, "prefix_id": "sys", "prefix_tokens": 16},
    {"arrival_time": 0.5, "prompt_tokens": 10, "output_tokens": 7, "priority": 2, "request_id": "b"},
    {"arrival_time": 2.0, "prompt_tokens": 16, "output_tokens": 1, "prefix_id": "sys", "prefix_tokens": 16},
    {"arrival_time": 1.0, "prompt_tokens": 30, "output_tokens": 3, "prefix_id": 7, "prefix_tokens": 30,
     "extra": "ignored"},
    {"arrival_time": 0.0, "prompt_tokens": 20, "output_tokens": 9, "prefix_id": "sys", "prefix_tokens": 16},
]
COLUMNS = ["arrival_time", "prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens", "priority",
           "request_id", "extra"]


def write_jsonl(path: Path, rows: list[dict], blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r) for r in rows) + "\n")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def test_trace_jsonl_replays_sorted_and_stable(tmp_path):
    reqs = list(trace_requests(write_jsonl(tmp_path / "t.jsonl", TRACE_ROWS, blank_lines=True), vocab_size=500))
    assert [r.request_id for r in reqs] == ["4", "b", "3", "0", "2"]  # ties at 2.0 keep file order
    assert [r.arrival_time for r in reqs] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert [r.num_prompt_tokens for r in reqs] == [20, 10, 30, 40, 16]
    assert [r.sampling_params.max_tokens for r in reqs] == [9, 7, 3, 5, 1]
    assert [r.priority for r in reqs] == [0, 2, 0, 0, 0]
    assert all(r.sampling_params.ignore_eos for r in reqs)
    assert all(0 <= t < 500 for r in reqs for t in r.prompt_token_ids)
    sys0, sys1, sys2 = reqs[0], reqs[3], reqs[4]
    assert sys2.prompt_token_ids == sys0.prompt_token_ids[:16]  # a prompt that is only the prefix
    assert common_prefix_len(sys0.prompt_token_ids, sys1.prompt_token_ids) >= 16
    assert reqs[2].prompt_token_ids[:16] != sys0.prompt_token_ids[:16]  # another prefix_id, another prefix


def test_trace_csv_gives_the_same_requests_as_jsonl(tmp_path):
    jsonl = trace_requests(write_jsonl(tmp_path / "t.jsonl", TRACE_ROWS), seed=4)
    csv_ = trace_requests(write_csv(tmp_path / "t.csv", TRACE_ROWS), seed=4)
    assert fingerprint(csv_) == fingerprint(jsonl)


def test_trace_seed_controls_tokens_only(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", TRACE_ROWS)
    a, b, c = (fingerprint(trace_requests(path, seed=s)) for s in (1, 1, 2))
    assert a == b
    assert [f[1] for f in a] != [f[1] for f in c]
    assert [f[:1] + f[2:] for f in a] == [f[:1] + f[2:] for f in c]


def test_trace_prefix_groups_share_exactly_the_prefix(tmp_path):
    rows = [{"arrival_time": i, "prompt_tokens": 40, "output_tokens": 1, "prefix_id": i % 3, "prefix_tokens": 8 + i % 3}
            for i in range(30)]
    reqs = list(trace_requests(write_jsonl(tmp_path / "t.json", rows), vocab_size=2**31 - 1))
    for a, b in itertools.combinations(reqs, 2):
        same = int(a.request_id) % 3 == int(b.request_id) % 3
        expected = 8 + int(a.request_id) % 3 if same else 0
        assert common_prefix_len(a.prompt_token_ids, b.prompt_token_ids) == expected


def test_trace_is_validated_eagerly_and_replayed_lazily(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", TRACE_ROWS + [{"arrival_time": 1.0}])
    with pytest.raises(WorkloadError):
        trace_requests(bad)  # raised by the call itself, before iterating
    gen = trace_requests(write_jsonl(tmp_path / "ok.jsonl", TRACE_ROWS))
    assert isinstance(gen, types.GeneratorType)
    assert next(gen).request_id == "4"


OK = '{"arrival_time": 0, "prompt_tokens": 4, "output_tokens": 2}'


@pytest.mark.parametrize("lines, lineno, fragment", [
    ([OK, OK, '{"arrival_time": 1,'], 3, "not valid JSON"),
    ([OK, "[1, 2, 3]"], 2, "expected a JSON object"),
    ([OK, "", '{"arrival_time": 1, "prompt_tokens": 4}'], 3, "missing required field 'output_tokens'"),
    (['{"prompt_tokens": 4, "output_tokens": 2}'], 1, "missing required field 'arrival_time'"),
    (['{"arrival_time": null, "prompt_tokens": 4, "output_tokens": 2}'], 1, "missing required field"),
    ([OK, '{"arrival_time": 1, "prompt_tokens": 0, "output_tokens": 2}'], 2, "prompt_tokens must be >= 1"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": -1}'], 1, "output_tokens must be >= 1"),
    (['{"arrival_time": -0.5, "prompt_tokens": 3, "output_tokens": 1}'], 1, "arrival_time must be >= 0"),
    (['{"arrival_time": "soon", "prompt_tokens": 3, "output_tokens": 1}'], 1, "arrival_time must be a number"),
    (['{"arrival_time": 1, "prompt_tokens": "many", "output_tokens": 1}'], 1, "prompt_tokens must be an integer"),
    (['{"arrival_time": 1, "prompt_tokens": 3.5, "output_tokens": 1}'], 1, "prompt_tokens must be an integer"),
    (['{"arrival_time": 1, "prompt_tokens": true, "output_tokens": 1}'], 1, "prompt_tokens must be an integer"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "priority": "hi"}'], 1, "priority"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "prefix_id": "a", "prefix_tokens": 4}'],
     1, "prefix_tokens=4 exceeds prompt_tokens=3"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "prefix_id": "a"}'], 1,
     "missing required field 'prefix_tokens'"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "prefix_tokens": 2}'], 1, "without a prefix_id"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "prefix_id": [1], "prefix_tokens": 2}'], 1,
     "prefix_id must be"),
    (['{"arrival_time": 1, "prompt_tokens": 9, "output_tokens": 1, "prefix_id": "a", "prefix_tokens": 4}', OK,
      '{"arrival_time": 2, "prompt_tokens": 9, "output_tokens": 1, "prefix_id": "a", "prefix_tokens": 5}'], 3,
     "prefix_id 'a' has prefix_tokens=5 here but 4 on line 1"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "request_id": "x"}', OK,
      '{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "request_id": "x"}'], 3,
     "duplicate request_id 'x'; line 1 already uses it"),
    (['{"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1, "request_id": "1"}', OK], 2,
     "duplicate request_id '1' (the default"),
])
def test_trace_errors_name_the_line(tmp_path, lines, lineno, fragment):
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkloadError) as e:
        trace_requests(path)
    assert f"trace.jsonl line {lineno}: " in str(e.value)
    assert fragment in str(e.value)


@pytest.mark.parametrize("text, lineno, fragment", [
    ("arrival_time,prompt_tokens\n0,4\n", 1, "output_tokens"),
    ("arrival_time,prompt_tokens,output_tokens\n0,4,2\n\n1,x,2\n", 4, "prompt_tokens must be an integer"),
    ("arrival_time,prompt_tokens,output_tokens\n0,4,2\n1,4\n", 3, "missing required field 'output_tokens'"),
    ("arrival_time,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,4,2,p,\n", 2, "prefix_tokens"),
])
def test_csv_errors_name_the_line(tmp_path, text, lineno, fragment):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(WorkloadError) as e:
        trace_requests(path)
    assert f"trace.csv line {lineno}: " in str(e.value) and fragment in str(e.value)


def test_csv_is_lenient_about_spacing_and_integral_floats(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time, prompt_tokens, output_tokens, priority\n0.25, 12, 3.0, \n")
    (r,) = trace_requests(path)
    assert (r.request_id, r.arrival_time, r.num_prompt_tokens, r.sampling_params.max_tokens, r.priority) == \
        ("0", 0.25, 12, 3, 0)


@pytest.mark.parametrize("name, text, fragment", [
    ("trace.txt", OK, "unknown trace suffix '.txt'; use .jsonl, .json, .csv"),
    ("trace.jsonl", "", "no requests"),
    ("trace.jsonl", "\n  \n", "no requests"),
    ("trace.csv", "", "no requests"),
    ("trace.csv", "arrival_time,prompt_tokens,output_tokens\n", "no requests"),
])
def test_trace_file_level_errors(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(WorkloadError, match=name) as e:
        trace_requests(path)
    assert fragment in str(e.value)


def test_trace_missing_file(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        trace_requests(tmp_path / "absent.jsonl")


def test_trace_sort_is_stable_for_many_ties(tmp_path):
    rows = [{"arrival_time": (7 * i) % 3, "prompt_tokens": 1, "output_tokens": 1} for i in range(300)]
    reqs = list(trace_requests(write_jsonl(tmp_path / "t.jsonl", rows)))
    expected = sorted(range(300), key=lambda i: (7 * i) % 3)  # Python's sort is stable
    assert [r.request_id for r in reqs] == [str(i) for i in expected]


def test_trace_ttft_slo_sets_the_deadline_and_bad_values_name_the_line(tmp_path) -> None:
    good = tmp_path / "slo.jsonl"
    good.write_text('{"arrival_time": 2.0, "prompt_tokens": 4, "output_tokens": 1, "ttft_slo": 0.5}\n'
                    '{"arrival_time": 3.0, "prompt_tokens": 4, "output_tokens": 1}\n')
    a, b = list(trace_requests(good))
    assert a.deadline == 2.5 and b.deadline is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"arrival_time": 0, "prompt_tokens": 4, "output_tokens": 1, "ttft_slo": 0}\n')
    with pytest.raises(WorkloadError, match="line 1: ttft_slo must be > 0"):
        list(trace_requests(bad))

"""Workloads: synthetic request streams and trace replay, as lazy `Request` iterators.

Serving metrics hinge on the workload (prompt and output lengths, arrival
burstiness, prefix sharing), so every knob is explicit, seeded and
reproducible. Requests are built lazily, a chunk of numbers at a time, so a
100k-request benchmark never holds every prompt in memory at once.
"""

from __future__ import annotations

import array
import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np

from batchserve.request import Request, SamplingParams

__all__ = ["WorkloadError", "LengthDist", "WorkloadSpec", "synthetic_requests", "trace_requests"]

_ARRIVALS = ("poisson", "gamma", "offline")
_LENGTH_FORMS = "N, fixed:N, uniform:LO:HI, lognormal:MEAN:SIGMA, empirical:PATH"
_TRACE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}

_CHUNK = 4096  # lengths, arrivals and groups are drawn this many at a time
_TOKEN_BATCH = 64  # prompt tokens are drawn for this many requests at a time
_MAX_LEN = 2**31 - 1  # caps absurd lognormal draws so they never overflow int64
_TRACE_REQUIRED = ("arrival_time", "prompt_tokens", "output_tokens")


class WorkloadError(ValueError):
    """A workload spec, length spec or trace file is invalid; the message says how to fix it."""


# --------------------------------------------------------------------------- lengths


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution parsed from a CLI spec string."""

    kind: str  # "fixed" | "uniform" | "lognormal" | "empirical"
    params: tuple  # fixed: (n,); uniform: (lo, hi) inclusive; lognormal: (mean, sigma); empirical: (values,)
    source: str | None = field(default=None, compare=False)  # empirical: the file, so str() round-trips

    def __post_init__(self) -> None:
        kind, p = self.kind, self.params
        if kind == "fixed":
            ok = len(p) == 1 and _is_int(p[0]) and p[0] >= 1
            need = "one integer >= 1"
        elif kind == "uniform":
            ok = len(p) == 2 and all(_is_int(x) for x in p) and 1 <= p[0] <= p[1]
            need = "integers 1 <= LO <= HI"
        elif kind == "lognormal":
            ok = len(p) == 2 and all(_is_finite(x) for x in p) and p[0] > 0 and p[1] >= 0
            need = "MEAN > 0 and SIGMA >= 0"
        elif kind == "empirical":
            ok = len(p) == 1 and isinstance(p[0], tuple) and len(p[0]) > 0 and all(_is_int(x) and x >= 1 for x in p[0])
            need = "a non-empty tuple of integers >= 1"
        else:
            raise WorkloadError(f"unknown length kind {kind!r}; accepted forms: {_LENGTH_FORMS}")
        if not ok:
            raise WorkloadError(f"{kind} needs {need}, got {p!r}")

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        """Parse `512`, `fixed:512`, `uniform:100:900`, `lognormal:512:0.8` or `empirical:PATH`."""
        if not isinstance(spec, str) or not spec.strip():
            raise _bad_spec(spec, "it is empty")
        text = spec.strip()
        kind, _, rest = text.partition(":") if ":" in text else ("fixed", ":", text)  # bare N is fixed
        kind = kind.lower()
        if kind == "empirical":
            if not rest:
                raise _bad_spec(spec, "empirical needs a file path")
            return cls("empirical", (_read_lengths(rest),), source=rest)
        arity = {"fixed": 1, "uniform": 2, "lognormal": 2}.get(kind)
        if arity is None:
            raise _bad_spec(spec, f"unknown kind {kind!r}")
        args = rest.split(":")
        if len(args) != arity:
            raise _bad_spec(spec, f"{kind} takes {arity} number(s), got {len(args)}")
        convert, noun = (float, "a number") if kind == "lognormal" else (int, "an integer")
        try:
            params = tuple(convert(a) for a in args)
        except ValueError:
            raise _bad_spec(spec, f"{kind} takes {noun} after each ':'") from None
        try:
            return cls(kind, params)
        except WorkloadError as e:
            raise _bad_spec(spec, str(e)) from None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw `n` lengths as int64, each >= 1 (rounded, clipped at 1)."""
        kind, p = self.kind, self.params
        if kind == "fixed":
            return np.full(n, p[0], dtype=np.int64)
        if kind == "uniform":
            return rng.integers(p[0], p[1] + 1, size=n, dtype=np.int64)
        if kind == "lognormal":
            mean, sigma = p
            x = rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma, size=n)
            return np.clip(np.rint(x), 1, _MAX_LEN).astype(np.int64)
        return self._values[rng.integers(0, len(self._values), size=n)]

    def mean(self) -> float:
        """The declared mean (before rounding), for capacity estimates and reports."""
        p = self.params
        if self.kind == "fixed":
            return float(p[0])
        if self.kind == "uniform":
            return (p[0] + p[1]) / 2
        if self.kind == "lognormal":
            return float(p[0])
        return float(self._values.mean())

    @cached_property
    def _values(self) -> np.ndarray:  # empirical values as an array, built once
        return np.asarray(self.params[0], dtype=np.int64)

    def __str__(self) -> str:
        p = self.params
        if self.kind == "empirical":
            return f"empirical:{self.source if self.source is not None else f'<{len(p[0])} values>'}"
        return ":".join([self.kind, *(_fmt_num(x) for x in p)])


def _bad_spec(spec: object, why: str) -> WorkloadError:
    return WorkloadError(
        f"bad length spec {spec!r}: {why}; accepted forms: {_LENGTH_FORMS} (e.g. lognormal:512:0.8)"
    )


def _fmt_num(x: float) -> str:
    """Shortest text that parses back to the same number (`512` rather than `512.0`)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(float(x))


def _read_lengths(path: str) -> tuple[int, ...]:
    """Lengths from a text file (one positive integer per line) or a JSON list of ints."""
    with _open(path, "empirical length file") as f:
        text = _read_all(f, path)
    values: list[int] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise WorkloadError(f"{path}: expected a JSON list of positive integers")
        for i, v in enumerate(data):
            if not (_is_int(v) and v >= 1):
                raise WorkloadError(f"{path}: element {i} is {v!r}; every length must be an integer >= 1")
            values.append(v)
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s:
                continue
            try:
                v = int(s)
            except ValueError:
                v = 0
            if v < 1:
                raise WorkloadError(f"{path} line {lineno}: {s!r} is not a positive integer")
            values.append(v)
    if not values:
        raise WorkloadError(f"{path}: no lengths found; write one positive integer per line or a JSON list")
    return tuple(values)


# --------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that defines a synthetic workload; validated on construction."""

    num_requests: int = 1000
    """Requests in the workload."""
    rate: float | None = None
    """Arrival rate in requests/s; None sends everything at t=0 (an offline batch)."""
    arrival: str = "poisson"
    """Arrival process: poisson, gamma (bursty, see burstiness_cv) or offline."""
    burstiness_cv: float = 1.0
    """Coefficient of variation of gamma inter-arrival times; 1.0 equals Poisson."""
    input_len: str = "lognormal:512:0.8"
    """Prompt tokens after any shared prefix: N, fixed:N, uniform:LO:HI, lognormal:MEAN:SIGMA, empirical:FILE."""
    output_len: str = "lognormal:256:0.8"
    """Tokens to generate per request (max_tokens, ignore_eos), same forms as input_len."""
    num_prefix_groups: int = 0
    """G groups; each request's prompt starts with its (random) group's shared prefix."""
    prefix_len: int = 0
    """Tokens of shared prefix per group (0 = no sharing)."""
    num_adapters: int = 0
    """N LoRA adapters (ids 1..N): each request runs under one, drawn by popularity (0: the base model only)."""
    adapter_zipf_exponent: float = 1.0
    """Adapter popularity skew: adapter k is drawn with probability proportional to k^-s (Zipf; 0 = uniform)."""
    vocab_size: int = 32000
    """Token ids are drawn uniformly from [0, vocab_size)."""
    seed: int = 0
    """Seed of every random draw: same seed, same workload, same result."""

    def __post_init__(self) -> None:
        _check_int("num_requests", self.num_requests, 1)
        if self.rate is not None and not (_is_finite(self.rate) and self.rate > 0):
            raise WorkloadError(f"rate must be a number > 0 (requests/s) or None for offline, got {self.rate!r}")
        if self.arrival not in _ARRIVALS:
            raise WorkloadError(f"unknown arrival {self.arrival!r}; choose one of {', '.join(_ARRIVALS)}")
        if self.arrival == "gamma" and self.rate is None:
            raise WorkloadError("arrival='gamma' needs a rate (requests/s); use arrival='offline' for t=0")
        if self.arrival == "offline" and self.rate is not None:
            raise WorkloadError(f"arrival='offline' sends every request at t=0, so rate={self.rate} "
                                "is meaningless; drop the rate or use poisson/gamma")
        if not (_is_finite(self.burstiness_cv) and self.burstiness_cv > 0):
            raise WorkloadError(f"burstiness_cv must be > 0 (1.0 = Poisson), got {self.burstiness_cv!r}")
        _check_int("num_prefix_groups", self.num_prefix_groups, 0)
        _check_int("prefix_len", self.prefix_len, 0)
        if (self.num_prefix_groups == 0) != (self.prefix_len == 0):
            raise WorkloadError(
                f"num_prefix_groups={self.num_prefix_groups} and prefix_len={self.prefix_len}: "
                "set both > 0 to share prefixes, or both to 0 for none"
            )
        _check_int("num_adapters", self.num_adapters, 0)
        if not (_is_finite(self.adapter_zipf_exponent) and self.adapter_zipf_exponent >= 0):
            raise WorkloadError(f"adapter_zipf_exponent must be a number >= 0 (0 = uniform popularity), "
                                f"got {self.adapter_zipf_exponent!r}")
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("seed", self.seed, 0)
        for name in ("input_len", "output_len"):
            try:
                dist = LengthDist.parse(getattr(self, name))
            except WorkloadError as e:
                raise WorkloadError(f"{name}: {e}") from None
            object.__setattr__(self, f"_{name}_dist", dist)  # parsed once; not a dataclass field

    @property
    def _process(self) -> str:
        """The arrival process in effect: no rate means offline whatever `arrival` says."""
        return "offline" if self.rate is None else self.arrival

    def adapter_popularity(self) -> np.ndarray:
        """Probability of each adapter (index k-1 for id k): Zipf with `adapter_zipf_exponent`."""
        weights = np.arange(1, self.num_adapters + 1, dtype=np.float64) ** -self.adapter_zipf_exponent
        return weights / weights.sum()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the spec: lengths canonical, arrival the process in effect."""
        d = asdict(self)
        d.update(arrival=self._process, input_len=str(self._input_len_dist),
                 output_len=str(self._output_len_dist))
        return d


def synthetic_requests(spec: WorkloadSpec) -> Iterator[Request]:
    """Lazily yield spec.num_requests Requests in arrival order (nondecreasing arrival_time).

    Numbers are drawn in fixed-size chunks from independent per-purpose streams,
    so the first k requests do not depend on num_requests, and changing one knob
    (say output_len) leaves the others' draws (arrivals, prompts) unchanged.
    """
    if not isinstance(spec, WorkloadSpec):
        raise TypeError(f"synthetic_requests takes a WorkloadSpec, got {type(spec).__name__}")
    return _synthetic(spec)


def _synthetic(spec: WorkloadSpec) -> Iterator[Request]:
    # spawned streams are independent of how many are spawned: the adapter stream leaves the others unchanged
    arrival_rng, in_rng, out_rng, group_rng, prefix_rng, token_rng, adapter_rng = _streams(spec.seed, 7)
    popularity = spec.adapter_popularity() if spec.num_adapters else None
    vocab, groups = spec.vocab_size, spec.num_prefix_groups
    prefixes = prefix_rng.integers(0, vocab, size=(groups, spec.prefix_len)).tolist() if groups else []
    next_arrival = 0.0
    for start in range(0, spec.num_requests, _CHUNK):
        m = min(_CHUNK, spec.num_requests - start)
        # Always draw full chunks, so a request's numbers do not depend on num_requests.
        in_lens = spec._input_len_dist.sample(in_rng, _CHUNK).tolist()
        out_lens = spec._output_len_dist.sample(out_rng, _CHUNK)[:m].tolist()
        group_ids = group_rng.integers(0, groups, size=_CHUNK)[:m].tolist() if groups else None
        adapter_ids = (adapter_rng.choice(spec.num_adapters, size=_CHUNK, p=popularity)[:m] + 1).tolist() \
            if popularity is not None else None
        gaps = _gaps(spec, arrival_rng)
        ends = np.cumsum(gaps) + next_arrival  # the first request of the run arrives at t=0
        arrivals = [next_arrival, *ends[: m - 1].tolist()]
        next_arrival = float(ends[m - 1])
        for j in range(m):
            if j % _TOKEN_BATCH == 0:
                # One draw per batch of requests (sizes fixed by the full chunk, so they do not
                # depend on num_requests): slicing a list beats a numpy call per request.
                batch_lens = in_lens[j : j + _TOKEN_BATCH]
                tokens = token_rng.integers(0, vocab, size=sum(batch_lens)).tolist()
                offset = 0
            suffix = tokens[offset : offset + in_lens[j]]
            offset += in_lens[j]
            prompt = prefixes[group_ids[j]] + suffix if group_ids else suffix
            yield Request(str(start + j), prompt, SamplingParams(max_tokens=out_lens[j], ignore_eos=True),
                          arrival_time=arrivals[j], adapter_id=adapter_ids[j] if adapter_ids else None)


def _gaps(spec: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    """One chunk of inter-arrival gaps with mean 1/rate (zeros when offline)."""
    process = spec._process
    if process == "offline":
        return np.zeros(_CHUNK)
    if process == "poisson":
        return rng.exponential(1.0 / spec.rate, size=_CHUNK)
    shape = 1.0 / spec.burstiness_cv**2  # gamma with shape k has CV 1/sqrt(k)
    return rng.gamma(shape, 1.0 / (spec.rate * shape), size=_CHUNK)


# --------------------------------------------------------------------------- traces


def trace_requests(path: str | Path, *, vocab_size: int = 32000, seed: int = 0) -> Iterator[Request]:
    """Replay a JSONL or CSV trace as Requests sorted by arrival_time (stable).

    Fields: arrival_time (s), prompt_tokens, output_tokens; optional prefix_id
    with prefix_tokens (requests sharing a prefix_id share that many leading
    tokens), priority (lower runs first under `priority`), ttft_slo (seconds;
    the request's deadline for `edf` is arrival_time + ttft_slo), request_id.
    The whole file is read and validated now, so a bad row fails before any
    request runs; only a few numbers per row are kept and prompts are built
    lazily as the result is iterated.
    """
    _check_int("vocab_size", vocab_size, 1)
    _check_int("seed", seed, 0)
    rows = _TraceRows.load(Path(path))
    return _replay(rows, vocab_size, seed)


class _TraceRows:
    """A validated trace as compact columns: numbers per row, never token lists."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arrival = array.array("d")
        self.prompt = array.array("q")
        self.output = array.array("q")
        self.priority = array.array("q")
        self.ttft_slo = array.array("d")  # per-request TTFT target in seconds; inf for none
        self.prefix = array.array("q")  # index into prefix_lens, -1 for none
        self.prefix_lens: list[int] = []
        self.request_ids: dict[int, str] = {}  # row -> explicit request_id
        self._prefix_seen: dict[str, tuple[int, int]] = {}  # prefix_id -> (index, first line)
        self._ids_seen: dict[str, int] = {}  # request_id -> line; dropped after loading

    @classmethod
    def load(cls, path: Path) -> _TraceRows:
        fmt = _TRACE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise WorkloadError(f"{path}: unknown trace suffix {path.suffix!r}; use "
                                f"{', '.join(_TRACE_SUFFIXES)} (JSON Lines or CSV with a header row)")
        rows = cls(str(path))
        records = _jsonl_records if fmt == "jsonl" else _csv_records
        with _open(path, "trace file", newline="" if fmt == "csv" else None) as f:
            try:
                for lineno, record in records(f, rows.name):
                    try:
                        rows._add(lineno, record)
                    except ValueError as e:
                        raise WorkloadError(f"{rows.name} line {lineno}: {e}") from None
            except UnicodeDecodeError:
                raise WorkloadError(f"{rows.name}: not UTF-8 text; save the trace as UTF-8") from None
        if not rows.prompt:
            raise WorkloadError(f"{rows.name}: the trace has no requests; give one row per request "
                                f"with {', '.join(_TRACE_REQUIRED)}")
        rows._ids_seen.clear()
        return rows

    def _add(self, lineno: int, rec: Mapping[str, Any]) -> None:
        row = len(self.prompt)
        arrival = _float_field(rec, "arrival_time")
        if arrival < 0:
            raise ValueError(f"arrival_time must be >= 0 seconds, got {arrival}")
        prompt = _int_field(rec, "prompt_tokens", minimum=1)
        output = _int_field(rec, "output_tokens", minimum=1)
        priority = _int_field(rec, "priority", default=0)
        ttft_slo = float("inf")
        if _value(rec, "ttft_slo") is not None:
            ttft_slo = _float_field(rec, "ttft_slo")
            if not ttft_slo > 0:
                raise ValueError(f"ttft_slo must be > 0 seconds, got {ttft_slo}")
        prefix_index = -1
        prefix_id = _value(rec, "prefix_id")
        if prefix_id is None:
            if _value(rec, "prefix_tokens") is not None:
                raise ValueError("prefix_tokens is given without a prefix_id; add prefix_id or drop it")
        else:
            if isinstance(prefix_id, bool) or not isinstance(prefix_id, (str, int)):
                raise ValueError(f"prefix_id must be a string or integer, got {prefix_id!r}")
            key = str(prefix_id)
            length = _int_field(rec, "prefix_tokens", minimum=1)
            if length > prompt:
                raise ValueError(f"prefix_tokens={length} exceeds prompt_tokens={prompt}")
            if key in self._prefix_seen:
                prefix_index, first = self._prefix_seen[key]
                if self.prefix_lens[prefix_index] != length:
                    raise ValueError(f"prefix_id {key!r} has prefix_tokens={length} here but "
                                     f"{self.prefix_lens[prefix_index]} on line {first}; "
                                     "one prefix_id must always have the same prefix_tokens")
            else:
                prefix_index = len(self.prefix_lens)
                self.prefix_lens.append(length)
                self._prefix_seen[key] = (prefix_index, lineno)
        rid = _value(rec, "request_id")
        if rid is not None:
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise ValueError(f"request_id must be a string, got {rid!r}")
            rid = str(rid)
        key = rid if rid is not None else str(row)
        if key in self._ids_seen:
            default = "" if rid is not None else " (the default: this row's 0-based index)"
            raise ValueError(f"duplicate request_id {key!r}{default}; line {self._ids_seen[key]} "
                             "already uses it")
        self._ids_seen[key] = lineno
        if rid is not None:
            self.request_ids[row] = rid
        self.arrival.append(arrival)
        self.prompt.append(prompt)
        self.output.append(output)
        self.priority.append(priority)
        self.ttft_slo.append(ttft_slo)
        self.prefix.append(prefix_index)


def _jsonl_records(f: Iterable[str], name: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{name} line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                "write one JSON object per line") from None
        if not isinstance(record, dict):
            raise WorkloadError(f"{name} line {lineno}: expected a JSON object like "
                                f'{{"arrival_time": 0.5, "prompt_tokens": 512, "output_tokens": 128}}, '
                                f"got {type(record).__name__}")
        yield lineno, record


def _csv_records(f: Iterable[str], name: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(f, skipinitialspace=True)
    if reader.fieldnames is None:
        return  # empty file: reported as an empty trace
    reader.fieldnames = [c.strip() for c in reader.fieldnames]
    missing = [c for c in _TRACE_REQUIRED if c not in reader.fieldnames]
    if missing:
        raise WorkloadError(f"{name} line 1: the header lacks column(s) {', '.join(missing)}; "
                            f"it must name at least {', '.join(_TRACE_REQUIRED)}")
    for record in reader:
        if any(v not in (None, "") for k, v in record.items() if k is not None):
            yield reader.line_num, record


def _replay(rows: _TraceRows, vocab_size: int, seed: int) -> Iterator[Request]:
    prefix_rng, token_rng = _streams(seed, 2)
    prefixes: dict[int, list[int]] = {}  # built on first use, then shared by every request of the group
    for i in np.argsort(np.frombuffer(rows.arrival, dtype=np.float64), kind="stable").tolist():
        n, g = rows.prompt[i], rows.prefix[i]
        prefix: list[int] = []
        if g >= 0:
            if g not in prefixes:
                prefixes[g] = prefix_rng.integers(0, vocab_size, size=rows.prefix_lens[g]).tolist()
            prefix = prefixes[g]
        prompt = prefix + token_rng.integers(0, vocab_size, size=n - len(prefix)).tolist()
        deadline = rows.arrival[i] + rows.ttft_slo[i] if rows.ttft_slo[i] != float("inf") else None
        yield Request(rows.request_ids.get(i, str(i)), prompt,
                      SamplingParams(max_tokens=rows.output[i], ignore_eos=True),
                      arrival_time=rows.arrival[i], priority=rows.priority[i], deadline=deadline)


def _value(rec: Mapping[str, Any], key: str) -> Any:
    """A field's value, or None when absent, null or blank (CSV's empty cell)."""
    v = rec.get(key)
    return None if v is None or (isinstance(v, str) and not v.strip()) else v


def _float_field(rec: Mapping[str, Any], key: str) -> float:
    v = _value(rec, key)
    if v is None:
        raise ValueError(f"missing required field {key!r}")
    try:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise TypeError
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{key} must be finite, got {v!r}")
    return x


def _int_field(rec: Mapping[str, Any], key: str, *, minimum: int | None = None,
               default: int | None = None) -> int:
    v = _value(rec, key)
    if v is None:
        if default is not None:
            return default
        raise ValueError(f"missing required field {key!r}")
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {v!r}") from None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v) or abs(v) >= 2**63:
        raise ValueError(f"{key} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {v}")
    return v


# --------------------------------------------------------------------------- helpers


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    """Independent generators, one per purpose, all derived from `seed`."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _read_all(f: IO[str], path: str) -> str:
    try:
        return f.read()
    except UnicodeDecodeError:
        raise WorkloadError(f"{path}: not UTF-8 text") from None


def _open(path: str | Path, what: str, newline: str | None = None) -> IO[str]:
    try:
        return open(path, encoding="utf-8-sig", newline=newline)
    except FileNotFoundError:
        raise WorkloadError(f"{what} {str(path)!r} not found") from None
    except OSError as e:
        raise WorkloadError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_finite(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def _check_int(name: str, value: object, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise WorkloadError(f"{name} must be an integer >= {minimum}, got {value!r}")

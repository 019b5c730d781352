"""The job loop: plan the input (skip what is done, tokenize, order), feed a backend, write results.

A backend is an engine behind three calls (`add`, `step`, `prefix_ready`): the
real `LLMEngine` here, a simulated replica for `--estimate`, one Ray actor per
replica for `--replicas`. All share `feed`, so they admit requests in the same
order with the same prefix gating.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from ..lora.request import LoRARequest
from ..metrics import RequestRecord
from ..outputs import RequestOutput
from ..progress import Progress
from ..openai import ServingContext, engine_error
from ..openai.structured import DEFAULT_TOOL_PARSER
from .batch_io import (
    CHAT_URL, BadLine, BatchRequest, Done, Entry, ResultWriter, check_unique_ids, detect_format, read_entries,
    scan_output,
)
from .openai_format import error_record, prepare, result_record
from .ordering import prefix_order

Finished = tuple[Entry, RequestOutput | None]  # a request that cannot run comes back as a BadLine


@dataclass(frozen=True)
class JobConfig:
    """How a job reads, orders and samples; the same values must be given to resume it."""

    prefix_aware: bool = True
    """Regroup requests by shared prompt prefix (else run them in input order)."""
    window: int = 10_000
    """Requests regrouped at a time: prompts held in memory, and the reach of the regrouping."""
    preserve_order: bool = False
    """Write results in input order (buffered, at most about a window of them)."""
    seed: int = 0
    """Job seed: requests without a body seed get one derived from it and their custom_id."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """SamplingParams fields for bodies that do not set them (e.g. max_tokens)."""
    served_model_names: tuple[str, ...] = ()
    """Names a line's `model` may give (the server's rule); empty: the model's own name."""
    tool_call_parser: str = DEFAULT_TOOL_PARSER
    """How `tool_choice: auto` finds calls in the output (the model family's format)."""
    lora_modules: tuple[LoRARequest, ...] = ()
    """Adapters a line's `model` may name instead (--lora-modules); the engine needs enable_lora."""
    keep_records: bool = False
    """Keep each request's timings in the summary (for --report's latency charts); memory grows with the job."""
    max_inflight: int = 1024
    """Requests handed to an engine at once; the rest wait in the ordered stream."""
    fsync_every: int = 256
    """Results written between fsyncs: a kill loses at most what the OS had not written yet."""
    replica_advance_s: float = 0.2
    """With Ray replicas: an actor call returns this long after something finished, so results stream back
    while the actor keeps stepping its batch in between."""


class Eta(Protocol):
    def finished(self, entry: Entry) -> None:
        """An entry was emitted (done or failed)."""

    def seconds_left(self, elapsed: float) -> float:
        """The predicted time left, `elapsed` seconds into the run."""


class Backend(Protocol):
    block_size: int

    def add(self, req: BatchRequest) -> None:
        """Queue a prepared request; ValueError (nothing queued) if it cannot run."""

    def step(self) -> list[Finished]:
        """Run one engine step; returns the requests it finished (or found it cannot run)."""

    def prefix_ready(self, custom_id: str) -> bool:
        """False while that request is queued and its prompt not yet computed."""

    def num_unfinished(self) -> int: ...

    def counters(self) -> dict[str, int]:
        """prefix_cache_queries, prefix_cache_hits, computed_prompt_tokens, generation_tokens; an engine adds
        spec_decode_num_proposals, spec_decode_num_drafts, spec_decode_num_draft_tokens and
        spec_decode_num_accepted_tokens."""


def plan(
    path: str, fmt: str, done: Done, context: ServingContext, config: JobConfig, block_size: int,
    on_skip: Callable[[Entry], None] = lambda e: None,
) -> Iterator[Entry]:
    """The input's entries not yet done, tokenized, in the order they will run."""

    def prepared() -> Iterator[Entry]:
        for entry in read_entries(path, fmt):
            if entry in done:
                on_skip(entry)
            elif isinstance(entry, BadLine):
                yield entry
            else:
                yield prepare(entry, context, config.seed)

    if not config.prefix_aware:
        return prepared()
    return prefix_order(prepared(), config.window, block_size)


def admit(
    backend: Backend, pending: deque[Entry], emit: Callable[[Entry, RequestOutput | None], None], max_inflight: int,
) -> None:
    """Hand pending entries to the backend in order, stopping at one whose anchor's prompt is not computed yet."""
    while pending and backend.num_unfinished() < max_inflight:
        nxt = pending[0]
        if isinstance(nxt, BatchRequest):
            if nxt.anchor is not None and not backend.prefix_ready(nxt.anchor):
                return
            try:
                backend.add(nxt)
            except Exception as err:  # this line alone fails (a ValueError says why; anything else is a bug)
                bad = err if isinstance(err, ValueError) else ValueError(f"the request could not be added: {err!r}")
                api = engine_error(bad, "messages" if nxt.url == CHAT_URL else "prompt")
                emit(BadLine(nxt.seq, nxt.line_no, nxt.custom_id, f"line {nxt.line_no}: {api.message}", api.param),
                     None)
        else:
            emit(nxt, None)
        pending.popleft()


def feed(
    backend: Backend, entries: Iterable[Entry], emit: Callable[[Entry, RequestOutput | None], None],
    max_inflight: int,
) -> None:
    """Admit entries in order and step the backend until every one is emitted."""
    it = iter(entries)
    pending: deque[Entry] = deque()
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_inflight:
            entry = next(it, None)
            if entry is None:
                exhausted = True
            else:
                pending.append(entry)
        admit(backend, pending, emit, max_inflight)
        if not backend.num_unfinished():
            if exhausted and not pending:
                return
            continue
        for req, out in backend.step():
            emit(req, out)


class InOrder:
    """Passes records on in input order (`seq`), holding early ones; skipped seqs count as written."""

    def __init__(self, write: Callable[[dict[str, Any]], None]) -> None:
        self._write = write
        self._next = 0
        self._held: dict[int, dict[str, Any] | None] = {}

    def put(self, seq: int, record: dict[str, Any] | None) -> None:
        self._held[seq] = record
        while self._next in self._held:
            rec = self._held.pop(self._next)
            if rec is not None:
                self._write(rec)
            self._next += 1


@dataclass
class Summary:
    """What a job did: the end-of-run table and `--json`."""

    num_requests: int = 0
    num_ok: int = 0
    num_failed: int = 0
    num_skipped: int = 0
    """Already in the output from an earlier run."""
    prompt_tokens: int = 0
    output_tokens: int = 0
    computed_prompt_tokens: int = 0
    prefix_cache_hit_rate: float = 0.0
    spec_proposals: int = 0
    """Speculative decoding: draft lookups, the verifications that carried drafts, their draft tokens, and of
    them those accepted (0 with speculation off)."""
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    wall_s: float = 0.0
    records: list[RequestRecord] = field(default_factory=list, repr=False)
    """Each request's timings, with JobConfig.keep_records (not in to_dict)."""

    @property
    def output_token_throughput(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def total_token_throughput(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.wall_s if self.wall_s else 0.0

    def then(self, rest: Summary) -> Summary:
        """This run followed by `rest`: counts and wall times add, the prefix-cache hit rate is over both runs'
        prompt tokens; `rest`'s records (each run's times start at its own zero)."""
        both = replace(rest, **{f.name: getattr(self, f.name) + getattr(rest, f.name)
                                for f in fields(self) if f.type == "int"})
        both.wall_s = self.wall_s + rest.wall_s
        if both.prompt_tokens:
            both.prefix_cache_hit_rate = (self.prefix_cache_hit_rate * self.prompt_tokens
                                          + rest.prefix_cache_hit_rate * rest.prompt_tokens) / both.prompt_tokens
        return both

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "records"},
            "prompt_tokens_saved": max(0, self.prompt_tokens - self.computed_prompt_tokens),
            "request_throughput": self.num_ok / self.wall_s if self.wall_s else 0.0,
            "output_token_throughput": self.output_token_throughput,
            "total_token_throughput": self.total_token_throughput,
        }


def request_record(custom_id: str, out: RequestOutput) -> RequestRecord:
    """A finished request's timings (of its first completion, as RequestMetrics keeps them) for reports."""
    m = out.metrics
    assert m is not None and m.finish_time is not None
    nan = float("nan")
    first = out.outputs[0]
    return RequestRecord(custom_id, 0, m.arrival_time, nan if m.first_scheduled_time is None else m.first_scheduled_time,
                         nan if m.first_token_time is None else m.first_token_time, m.finish_time,
                         len(out.prompt_token_ids), len(first.token_ids), out.num_cached_tokens, m.num_preemptions,
                         first.finish_reason or "unknown")


class Recorder:
    """Turns finished entries into result lines, counts them and reports progress."""

    def __init__(
        self, writer: ResultWriter | None, preserve_order: bool, total: int,
        progress: Callable[[Summary, int], None] | None = None, keep_records: bool = False,
    ) -> None:
        self.summary = Summary(num_requests=total)
        self._keep_records = keep_records
        self._t0 = time.perf_counter()
        self._progress = progress
        write = writer.write if writer is not None else (lambda record: None)
        self._order = InOrder(write) if preserve_order else None
        self._write = write

    def skip(self, entry: Entry) -> None:
        self.summary.num_skipped += 1
        if self._order is not None:
            self._order.put(entry.seq, None)

    def emit(self, entry: Entry, out: RequestOutput | None) -> None:
        s = self.summary
        if isinstance(entry, BadLine):
            record = error_record(entry)
            s.num_failed += 1
        else:
            assert out is not None
            record = result_record(entry, out)
            usage = record["response"]["body"]["usage"]
            s.num_ok += 1
            s.prompt_tokens += usage["prompt_tokens"]
            s.output_tokens += usage["completion_tokens"]
            if self._keep_records and out.metrics is not None:
                s.records.append(request_record(entry.custom_id, out))
        if self._order is not None:
            self._order.put(entry.seq, record)
        else:
            self._write(record)
        s.wall_s = time.perf_counter() - self._t0
        if self._progress is not None:
            self._progress(s, s.num_ok + s.num_failed + s.num_skipped)

    def finish(self, counters: dict[str, int]) -> Summary:
        s = self.summary
        s.wall_s = time.perf_counter() - self._t0
        s.computed_prompt_tokens = counters["computed_prompt_tokens"]
        queries = counters["prefix_cache_queries"]
        s.prefix_cache_hit_rate = counters["prefix_cache_hits"] / queries if queries else 0.0
        s.spec_proposals = counters.get("spec_decode_num_proposals", 0)  # a simulated twin has none
        s.spec_drafts = counters.get("spec_decode_num_drafts", 0)
        s.spec_draft_tokens = counters.get("spec_decode_num_draft_tokens", 0)
        s.spec_accepted_tokens = counters.get("spec_decode_num_accepted_tokens", 0)
        return s


def run_job(
    input_path: str, output_path: str, make_backend: Callable[[], Backend],
    make_context: Callable[[Backend], ServingContext], config: JobConfig, quiet: bool = False,
    make_eta: Callable[[Backend, Done], Eta] | None = None,
) -> Summary:
    """Run (or resume) a job: check the input, skip what the output holds, write the rest as it finishes.

    Duplicate custom_ids and an unreadable output stop the job before the model loads. `make_eta`: the
    progress bar's ETA for the work left (the job's simulated twin); without one the bar extrapolates the rate.
    """
    fmt = detect_format(input_path)
    total = check_unique_ids(input_path, fmt)
    done = scan_output(output_path)
    backend = make_backend()
    context = make_context(backend)
    eta = make_eta(backend, done) if make_eta is not None else None
    with (ResultWriter(output_path, config.fsync_every) as writer,
          Progress("run", total, enabled=not quiet, own_eta=eta is not None) as progress):

        def show(s: Summary, num_done: int) -> None:
            if not progress.enabled:
                return
            c = backend.counters()
            hit = c["prefix_cache_hits"] / c["prefix_cache_queries"] if c["prefix_cache_queries"] else 0.0
            left = f", ETA {eta.seconds_left(s.wall_s):.0f} s" if eta is not None else ""  # else the bar's, by rate
            progress.update(num_done, f"{s.output_token_throughput:.0f} output tok/s, prefix hit {hit:.0%}{left}")

        def emit(entry: Entry, out: RequestOutput | None) -> None:
            if eta is not None:
                eta.finished(entry)
            recorder.emit(entry, out)

        recorder = Recorder(writer, config.preserve_order, total, show, config.keep_records)
        entries = plan(input_path, fmt, done, context, config, backend.block_size, on_skip=recorder.skip)
        feed(backend, entries, emit, config.max_inflight)
    return recorder.finish(backend.counters())

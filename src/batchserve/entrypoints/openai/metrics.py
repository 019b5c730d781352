"""`/metrics`: the gauges, counters and latency histograms vLLM users already scrape, as `batchserve:*`.

Gauges and counters are read from the engine thread's latest `EngineStats` at
scrape time; latency histograms are observed in the engine thread as outputs
appear (prometheus_client metrics are thread-safe). Each server has its own
registry, so several can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ...outputs import RequestOutput
from .engine_thread import AsyncEngine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "batchserve:"
# vLLM's buckets, with finer low ends: a CPU engine's steps take milliseconds.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class ServerMetrics:
    """The server's Prometheus registry; `observe` is the engine thread's per-step hook."""

    def __init__(self, model_name: str, engine: AsyncEngine) -> None:
        self.model_name = model_name
        self._engine = engine
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            h = Histogram(_PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)
            return h.labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token (arrival to first token).",
                              _TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive tokens of a request.",
                             _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to finish of a request.", _REQUEST_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Arrival to first scheduling of a request.",
                               _REQUEST_BUCKETS)
        self._success = Counter(_PREFIX + "request_success", "Finished requests by finish reason.",
                                labels + ["finished_reason"], registry=self.registry)
        self._last_token: dict[str, tuple[int, float]] = {}  # request id -> (tokens so far, time of the last)
        self.registry.register(self)

    def observe(self, outputs: list[RequestOutput], now: float) -> None:
        """Record the latencies these outputs reveal; `now` is the engine clock at the end of the step."""
        for out in outputs:
            num_tokens = sum(len(c.token_ids) for c in out.outputs)
            seen, last = self._last_token.get(out.request_id, (0, 0.0))
            m = out.metrics
            if num_tokens > seen:
                if seen == 0 and m.first_token_time is not None:
                    self.ttft.observe(m.first_token_time - m.arrival_time)
                elif seen > 0:
                    self.itl.observe(now - last)
                self._last_token[out.request_id] = (num_tokens, now)
            if out.finished:
                self._last_token.pop(out.request_id, None)
                reason = out.outputs[0].finish_reason or "abort"
                self._success.labels(self.model_name, reason).inc()
                if reason != "abort" and m.finish_time is not None:
                    self.e2e.observe(m.finish_time - m.arrival_time)
                    if m.first_scheduled_time is not None:
                        self.queue.observe(m.first_scheduled_time - m.arrival_time)

    def collect(self) -> Iterator[Metric]:
        """Gauges and counters from the engine's latest stats (the registry calls this at scrape time)."""
        s = self._engine.stats
        for family, name, doc, value in (
            (GaugeMetricFamily, "num_requests_running", "Sequences in the running batch.", s.num_running),
            (GaugeMetricFamily, "num_requests_waiting", "Sequences waiting to be scheduled.", s.num_waiting),
            (GaugeMetricFamily, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
             s.kv_cache_usage),
            (CounterMetricFamily, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             s.prefix_cache_queries),
            (CounterMetricFamily, "prefix_cache_hits", "Prompt tokens served from the prefix cache.",
             s.prefix_cache_hits),
            (CounterMetricFamily, "prompt_tokens", "Prompt tokens computed by the model.", s.computed_prompt_tokens),
            (CounterMetricFamily, "generation_tokens", "Tokens generated.", s.generation_tokens),
            (CounterMetricFamily, "num_preemptions", "Preemptions (a running request's blocks freed to make room).",
             s.num_preemptions),
            (CounterMetricFamily, "spec_decode_num_drafts", "Speculative verification steps that carried a draft.",
             s.spec_decode_num_drafts),
            (CounterMetricFamily, "spec_decode_num_draft_tokens", "Draft tokens proposed and verified.",
             s.spec_decode_num_draft_tokens),
            (CounterMetricFamily, "spec_decode_num_accepted_tokens", "Draft tokens the target model accepted.",
             s.spec_decode_num_accepted_tokens),
        ):
            metric = family(_PREFIX + name, doc, labels=["model_name"])
            metric.add_metric([self.model_name], value)
            yield metric

    def render(self) -> bytes:
        return generate_latest(self.registry)
